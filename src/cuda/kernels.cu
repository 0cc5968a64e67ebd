// CUDA kernels of the backend: W8A8 activation quantization, the dequantization epilogue and
// the bias additions of the CUDA runtime.
// Both reproduce the host definitions in src/core/quant.cc bit for bit: f32 multiply by the
// reciprocal, round half to even (rintf), add the offset, saturate; int64 sum converted to f32
// (round to nearest), one f32 multiply, one rounding to the output type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"

namespace tpl::cuda::kernels {
namespace {

__device__ __forceinline__ float load(const void* p, int type, std::int64_t i) {
  switch (type) {
    case 1:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case 2:
      return __half2float(static_cast<const __half*>(p)[i]);
    default:
      return static_cast<const float*>(p)[i];
  }
}

__device__ __forceinline__ void store(void* p, int type, std::int64_t i, float v) {
  switch (type) {
    case 1:
      static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
      break;
    case 2:
      static_cast<__half*>(p)[i] = __float2half_rn(v);
      break;
    default:
      static_cast<float*>(p)[i] = v;
  }
}

// Calls f(r, c) for every element of a rows x cols matrix (grid-stride loop).
template <typename F>
__device__ __forceinline__ void for_each(std::int64_t rows, std::int64_t cols, F f) {
  const std::int64_t total = rows * cols;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < total;
       i += std::int64_t(gridDim.x) * blockDim.x)
    f(i / cols, i % cols);
}

__global__ void quantize_kernel(const void* x, int x_type, std::int64_t ldx, std::int8_t* q,
                                std::int64_t ldq, std::int64_t rows, std::int64_t cols,
                                float inv_scale, std::int32_t offset) {
  for_each(rows, cols, [&](std::int64_t r, std::int64_t c) {
    // The offset before rounding, as the host's quantize_value (bit-identical: no FMA).
    const float v =
        rintf(__fadd_rn(__fmul_rn(load(x, x_type, r * ldx + c), inv_scale), float(offset)));
    q[r * ldq + c] = static_cast<std::int8_t>(fminf(fmaxf(v, -128.f), 127.f));
  });
}

__global__ void dequantize_kernel(const std::int32_t* acc, std::int64_t ldacc,
                                  const std::int32_t* quant_bias, const float* deq_scale, void* y,
                                  int y_type, std::int64_t ldy, std::int64_t rows,
                                  std::int64_t cols) {
  for_each(rows, cols, [&](std::int64_t r, std::int64_t c) {
    long long a = acc[r * ldacc + c];
    if (quant_bias) a += quant_bias[c];
    store(y, y_type, r * ldy + c, __fmul_rn(__ll2float_rn(a), deq_scale[c]));
  });
}

// Both additions use __fadd_rn/__fmul_rn so nvcc cannot contract them into an FMA: the host
// code (ISO C++, no FMA contraction) rounds the product and the sum separately.
__global__ void add_row_bias_kernel(void* y, int y_type, std::int64_t ldy, const float* bias,
                                    std::int64_t rows, std::int64_t cols) {
  for_each(rows, cols, [&](std::int64_t r, std::int64_t c) {
    const std::int64_t at = r * ldy + c;
    store(y, y_type, at, __fadd_rn(load(y, y_type, at), bias[c]));
  });
}

__global__ void add_dequantized_bias_kernel(void* y, int y_type, std::int64_t ldy,
                                            const std::int32_t* quant_bias, const float* deq_scale,
                                            std::int64_t rows, std::int64_t cols) {
  for_each(rows, cols, [&](std::int64_t r, std::int64_t c) {
    const std::int64_t at = r * ldy + c;
    const float b = __fmul_rn(__int2float_rn(quant_bias[c]), deq_scale[c]);
    store(y, y_type, at, __fadd_rn(load(y, y_type, at), b));
  });
}

unsigned grid_for(std::int64_t total) {
  const std::int64_t blocks = (total + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

cudaError_t quantize(const void* x, int x_type, std::int64_t ldx, std::int8_t* q, std::int64_t ldq,
                     std::int64_t rows, std::int64_t cols, float inv_scale, std::int32_t offset,
                     cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  quantize_kernel<<<grid_for(rows * cols), 256, 0, stream>>>(x, x_type, ldx, q, ldq, rows, cols,
                                                             inv_scale, offset);
  return cudaGetLastError();
}

cudaError_t w8a8_dequantize(const std::int32_t* acc, std::int64_t ldacc,
                            const std::int32_t* quant_bias, const float* deq_scale, void* y,
                            int y_type, std::int64_t ldy, std::int64_t rows, std::int64_t cols,
                            cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  dequantize_kernel<<<grid_for(rows * cols), 256, 0, stream>>>(acc, ldacc, quant_bias, deq_scale, y,
                                                               y_type, ldy, rows, cols);
  return cudaGetLastError();
}

cudaError_t add_row_bias(void* y, int y_type, std::int64_t ldy, const float* bias,
                         std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  add_row_bias_kernel<<<grid_for(rows * cols), 256, 0, stream>>>(y, y_type, ldy, bias, rows, cols);
  return cudaGetLastError();
}

cudaError_t add_dequantized_bias(void* y, int y_type, std::int64_t ldy,
                                 const std::int32_t* quant_bias, const float* deq_scale,
                                 std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  add_dequantized_bias_kernel<<<grid_for(rows * cols), 256, 0, stream>>>(y, y_type, ldy, quant_bias,
                                                                         deq_scale, rows, cols);
  return cudaGetLastError();
}

}  // namespace tpl::cuda::kernels
