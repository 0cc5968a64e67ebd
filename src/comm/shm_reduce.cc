#include "comm/shm_reduce.h"

#include <immintrin.h>

namespace tpl::shm {

namespace {

void sum_f32_scalar(const float* const* src, int n, float* dst, float* dst2, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    float acc = src[0][i];
    for (int k = 1; k < n; ++k) acc += src[k][i];
    dst[i] = acc;
    if (dst2) dst2[i] = acc;
  }
}

__attribute__((target("avx2"))) void sum_f32_avx2(const float* const* src, int n, float* dst,
                                                  float* dst2, std::size_t count) {
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m256 acc = _mm256_loadu_ps(src[0] + i);
    for (int k = 1; k < n; ++k) acc = _mm256_add_ps(acc, _mm256_loadu_ps(src[k] + i));
    _mm256_storeu_ps(dst + i, acc);
    if (dst2) _mm256_storeu_ps(dst2 + i, acc);
  }
  const float* tail[64];
  for (int k = 0; k < n; ++k) tail[k] = src[k] + i;
  sum_f32_scalar(tail, n, dst + i, dst2 ? dst2 + i : nullptr, count - i);
}

__attribute__((target("avx512f"))) void sum_f32_avx512(const float* const* src, int n, float* dst,
                                                       float* dst2, std::size_t count) {
  std::size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    __m512 acc = _mm512_loadu_ps(src[0] + i);
    for (int k = 1; k < n; ++k) acc = _mm512_add_ps(acc, _mm512_loadu_ps(src[k] + i));
    _mm512_storeu_ps(dst + i, acc);
    if (dst2) _mm512_storeu_ps(dst2 + i, acc);
  }
  const float* tail[64];
  for (int k = 0; k < n; ++k) tail[k] = src[k] + i;
  sum_f32_scalar(tail, n, dst + i, dst2 ? dst2 + i : nullptr, count - i);
}

}  // namespace

const char* sum_kernel_name(CpuIsa isa) {
  return isa >= CpuIsa::kAvx512Core ? "avx512" : isa >= CpuIsa::kAvx2 ? "avx2" : "scalar";
}

void sum_f32(const float* const* src, int n, float* dst, std::size_t count, CpuIsa isa,
             float* dst2) {
  // The tail pointer arrays hold 64 members; the communicator refuses larger groups.
  if (isa >= CpuIsa::kAvx512Core)
    sum_f32_avx512(src, n, dst, dst2, count);
  else if (isa >= CpuIsa::kAvx2)
    sum_f32_avx2(src, n, dst, dst2, count);
  else
    sum_f32_scalar(src, n, dst, dst2, count);
}

void sum_i32(const std::int32_t* const* src, int n, std::int32_t* dst, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint32_t acc = static_cast<std::uint32_t>(src[0][i]);
    for (int k = 1; k < n; ++k) acc += static_cast<std::uint32_t>(src[k][i]);
    dst[i] = static_cast<std::int32_t>(acc);
  }
}

}  // namespace tpl::shm
