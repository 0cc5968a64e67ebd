// AVX2 int8 x int8 -> int32 GEMM: y[m, j] = sum_i x[m, i] * W[j, i], exact (see gemm.h).
//
// Exactness. Without VNNI the only 8-bit multiply is vpmaddubsw (u8 x s8, adjacent products
// summed into a *saturating* s16). Fed the usual way (x + 128 as u8) its pair sums reach
// 2 * 255 * 127 and saturate silently. This kernel uses the sign trick instead, arranged for
// W8A8's ranges (activations -128..127, weights symmetric -127..127):
//   unsigned operand u = |x|        (vpabsb; |-128| = 0x80 read as u8 is 128, correct),
//   signed operand   s = w * sgn(x) (vpsignb; |w| <= 127, so the negation cannot overflow),
// so u * s = x * w and a pair sum is at most 2 * 128 * 127 = 32512 < 32767: never saturated.
// vpmaddwd with ones widens the pairs to int32, vpaddd accumulates. Every partial sum the kernel
// forms (a lane, a k block, the horizontal reduction) is a sum of a subset of the products, so
// |partial| <= k * 2^14; for k <= kMaxExactK = 2^17 - 1 that is < 2^31 and int32 is exact. For
// larger k the product range is split into chunks of at most kMaxExactK, each reduced exactly in
// int32 and summed in int64; an output outside int32 throws BackendError (as the reference).
//
// Weights of -128 (vpsignb would turn -(-128) back into -128) are packed as -127 and recorded as
// sparse corrections (j, i): x * -128 = x * -127 - x, so after the kernel y[m, j] -= x[m, i] for
// each entry, in integer arithmetic: still exact, and free when W is symmetric (the W8A8 case).
//
// Layout and blocking (tuned on Zen 3: 32 KiB L1d, 512 KiB L2 per core; one thread measured
// about 1.4-1.6x OpenBLAS's f32 sgemm GOP/s at K = N = 4096, M >= 256):
//  * W is packed once into strips of kNR = 4 rows (n padded with zero rows): for each 32-wide k
//    step the 4 rows' 32 bytes lie together, k padded with zeros to a multiple of 32, so a tile
//    reads one sequential stream.
//  * Per call, x is staged into groups of kMR = 3 rows: per k step the rows' 32 bytes, then their
//    |x| (computed once here, not per tile), zero padded likewise. Zeros contribute nothing.
//  * Microkernel: 3 x 4 rows, 12 int32 ymm accumulators, 4 vector ops per (x row, W row) pair
//    and step (vpsignb, vpmaddubsw, vpmaddwd, vpaddd), horizontal reduction once per tile. The
//    two multiplies per pair bound it at one pair-step per cycle on Zen 3's two multiply pipes;
//    it reaches about 0.7 of that. Row tails (M % 3) use 2- and 1-row variants of the same
//    kernel; column tails (n % 4) compute zero rows of W and store only the real columns.
//  * Loops: k blocks of kKBlock steps > blocks of kGroupBlock row groups > panels of kStripBlock
//    strips (L2) > group (its k block in L1) > strip. k blocks after the first add into y.
//  * OpenMP gives each thread a contiguous range of strips (and of row groups, when there are
//    fewer strips than threads); small problems run on the calling thread. Scratch (the staged
//    x) is kept in the object: run() is not thread-safe on one object, as the interface says.
#include "gemm/avx2_int8_gemm.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "tpl/error.h"

#define TPL_AVX2_TARGET __attribute__((target("avx2,fma")))

namespace tpl {
namespace {

const Where kWhere{"avx2_int8_gemm"};

constexpr int kMR = 3;                       // x rows per tile
constexpr int kNR = 4;                       // W rows per tile
constexpr std::int64_t kStep = 32;           // k per vector step
constexpr std::int64_t kMaxExactK = 131071;  // (2^17 - 1) * 2^14 < 2^31
constexpr std::int64_t kChunkSteps = kMaxExactK / kStep;
// Blocking, tuned on Zen 3 at K = N = 4096 (see the file comment): a tile's x group block
// (3 rows x 2 x kKBlock * 32 B = 24 KiB) is reused from L1 across kStripBlock strips, whose
// 8 x 16 KiB panel is reused from L2 across kGroupBlock groups.
constexpr std::int64_t kKBlock = 128;                        // steps per k block (4096 k)
constexpr std::int64_t kStripBlock = 8;                      // W strips per L2 panel
constexpr std::int64_t kGroupBlock = 64;                     // row groups (192 rows) per x block
constexpr std::int64_t kSerialMacs = std::int64_t{1} << 21;  // below this, no thread fork

std::int64_t round_up(std::int64_t v, std::int64_t m) {
  return (v + m - 1) / m * m;
}

// Grow-only 64-byte aligned byte buffer.
class AlignedBuffer {
 public:
  std::int8_t* get(std::size_t bytes) {
    if (bytes > size_) {
      const std::size_t alloc = (bytes + 63) / 64 * 64;
      void* p = std::aligned_alloc(64, alloc);
      if (!p) TPL_THROW(OutOfMemory, kWhere, "out of host memory allocating ", bytes, " bytes");
      buf_.reset(static_cast<std::int8_t*>(p));
      size_ = alloc;
    }
    return buf_.get();
  }

 private:
  struct Free {
    void operator()(std::int8_t* p) const { std::free(p); }
  };
  std::unique_ptr<std::int8_t, Free> buf_;
  std::size_t size_ = 0;
};

// acc += the 32 products x * w, as 8 int32 sums, with ax = |x|: |x| * (w * sgn x) = x * w, and
// the pair sums are <= 2 * 128 * 127 = 32512, so vpmaddubsw never saturates.
TPL_AVX2_TARGET inline __m256i dot_step(__m256i acc, __m256i ax, __m256i xv, __m256i w,
                                        __m256i ones) {
  const __m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w, xv));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
}

// 4 x 8 int32 lanes -> the 4 sums: two rounds of hadd within 128-bit halves, then the halves.
// Stores (or adds, when `accumulate`) the first ncols of them to o.
TPL_AVX2_TARGET __attribute__((noinline)) void store_row(__m256i a0, __m256i a1, __m256i a2,
                                                         __m256i a3, std::int32_t* o, int ncols,
                                                         bool accumulate) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  if (ncols == kNR) {
    auto* o128 = reinterpret_cast<__m128i*>(o);
    if (accumulate) sum = _mm_add_epi32(sum, _mm_loadu_si128(o128));
    _mm_storeu_si128(o128, sum);
    return;
  }
  alignas(16) std::int32_t v[kNR];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), sum);
  for (int c = 0; c < ncols; ++c) o[c] = accumulate ? o[c] + v[c] : v[c];
}

// One tile: MR (1..3) staged rows (xp: per step MR x vectors, then MR |x| vectors) times the 4 W
// rows of a strip (wp: per step 4 vectors), over `steps` k steps, into out[r * ostride + c] for
// c < ncols. Registers: 12 accumulators + ones + x and |x| of one row + a temporary; so it goes
// row by row and reloads each W vector from L1 per row (loads are cheap next to the 4 vector ops
// per pair). Named accumulators, not arrays, and an unroll by 2: measured best with GCC 12 at
// -O2 (an array stays in memory; without the unroll the 3-row kernel ran ~5-10% slower).
template <int MR>
TPL_AVX2_TARGET void tile(const std::int8_t* xp, const std::int8_t* wp, std::int64_t steps,
                          std::int32_t* out, std::int64_t ostride, int ncols, bool accumulate) {
  static_assert(MR >= 1 && MR <= 3);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
  __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  __m256i a20 = a00, a21 = a00, a22 = a00, a23 = a00;
  const auto* xs = reinterpret_cast<const __m256i*>(xp);
  const auto* ws = reinterpret_cast<const __m256i*>(wp);
#pragma GCC unroll 2
  for (std::int64_t s = 0; s < steps; ++s, xs += 2 * MR, ws += kNR) {
    __m256i ax = _mm256_load_si256(xs + MR);
    __m256i xv = _mm256_load_si256(xs);
    a00 = dot_step(a00, ax, xv, _mm256_load_si256(ws), ones);
    a01 = dot_step(a01, ax, xv, _mm256_load_si256(ws + 1), ones);
    a02 = dot_step(a02, ax, xv, _mm256_load_si256(ws + 2), ones);
    a03 = dot_step(a03, ax, xv, _mm256_load_si256(ws + 3), ones);
    if constexpr (MR >= 2) {
      ax = _mm256_load_si256(xs + MR + 1);
      xv = _mm256_load_si256(xs + 1);
      a10 = dot_step(a10, ax, xv, _mm256_load_si256(ws), ones);
      a11 = dot_step(a11, ax, xv, _mm256_load_si256(ws + 1), ones);
      a12 = dot_step(a12, ax, xv, _mm256_load_si256(ws + 2), ones);
      a13 = dot_step(a13, ax, xv, _mm256_load_si256(ws + 3), ones);
    }
    if constexpr (MR >= 3) {
      ax = _mm256_load_si256(xs + MR + 2);
      xv = _mm256_load_si256(xs + 2);
      a20 = dot_step(a20, ax, xv, _mm256_load_si256(ws), ones);
      a21 = dot_step(a21, ax, xv, _mm256_load_si256(ws + 1), ones);
      a22 = dot_step(a22, ax, xv, _mm256_load_si256(ws + 2), ones);
      a23 = dot_step(a23, ax, xv, _mm256_load_si256(ws + 3), ones);
    }
  }
  store_row(a00, a01, a02, a03, out, ncols, accumulate);
  if constexpr (MR >= 2) store_row(a10, a11, a12, a13, out + ostride, ncols, accumulate);
  if constexpr (MR >= 3) store_row(a20, a21, a22, a23, out + 2 * ostride, ncols, accumulate);
}

// Stages rows x[0, gm) of one group: for each step, the gm rows' 32 bytes then their |x|.
TPL_AVX2_TARGET void stage_group(const TensorView& x, std::int64_t row0, int gm, std::int64_t k,
                                 std::int64_t steps, std::int8_t* dst) {
  const std::int64_t full = k / kStep;
  for (int r = 0; r < gm; ++r) {
    const auto* src = static_cast<const std::int8_t*>(x.at(row0 + r, 0));
    for (std::int64_t s = 0; s < steps; ++s) {
      __m256i v;
      if (s < full) {
        v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + s * kStep));
      } else {  // the partial last step, and nothing beyond it: zeros
        alignas(32) std::int8_t tmp[kStep] = {};
        if (s == full) std::memcpy(tmp, src + s * kStep, static_cast<std::size_t>(k - s * kStep));
        v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
      }
      auto* d = reinterpret_cast<__m256i*>(dst + s * (2 * gm * kStep));
      _mm256_store_si256(d + r, v);
      _mm256_store_si256(d + gm + r, _mm256_abs_epi8(v));
    }
  }
}

class Avx2Int8Gemm final : public Gemm {
 public:
  Avx2Int8Gemm(const GemmDesc& desc, TensorView weight, TensorView bias) : desc_(desc) {
    TPL_CHECK(desc.k > 0 && desc.n > 0, kWhere, "k and n must be positive, got k=", desc.k,
              " n=", desc.n);
    TPL_CHECK_T(desc.act == DType::kI8 && desc.weight == DType::kI8 && desc.out == DType::kI32,
                Unsupported, kWhere, "dtypes act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out),
                " (this GEMM serves int8 x int8 -> int32 only)");
    TPL_CHECK(bias.empty(), kWhere, "int8 x int8 -> int32 GEMM takes no bias, got ",
              bias.describe(), " (W8A8's quant_bias is added by the caller's epilogue)");
    TPL_CHECK(weight.device() == Device::kHost, kWhere, "weight must be a host tensor");
    TPL_CHECK(weight.rows() == desc.n && weight.cols() == desc.k && weight.dtype() == DType::kI8,
              kWhere, "weight must be int8[n=", desc.n, ", k=", desc.k, "], got ",
              weight.describe());
    steps_ = round_up(desc.k, kStep) / kStep;
    strips_ = round_up(desc.n, kNR) / kNR;
    const std::int64_t strip_bytes = kNR * steps_ * kStep;
    std::int8_t* w = packed_.get(static_cast<std::size_t>(strips_ * strip_bytes));
    std::memset(w, 0, static_cast<std::size_t>(strips_ * strip_bytes));
    for (std::int64_t j = 0; j < desc.n; ++j) {
      const auto* src = static_cast<const std::int8_t*>(weight.at(j, 0));
      std::int8_t* dst = w + (j / kNR) * strip_bytes + (j % kNR) * kStep;
      for (std::int64_t i = 0; i < desc.k; ++i) {
        std::int8_t v = src[i];
        if (v == -128) {  // see the file comment: packed as -127, corrected after the kernel
          v = -127;
          corrections_.push_back({j, i});
        }
        dst[(i / kStep) * (kNR * kStep) + i % kStep] = v;
      }
    }
  }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "avx2_int8"; }
  bool has_bias() const override { return false; }

  void run(TensorView x, TensorView y, bool with_bias) override {
    check_gemm_run(*this, x, y, with_bias, Device::kHost, "avx2_int8_gemm");
    const std::int64_t M = x.rows();
    if (M == 0) return;
    const std::int64_t k = desc_.k, n = desc_.n;
    const std::int64_t groups = (M + kMR - 1) / kMR;
    std::int8_t* xs = stage_.get(static_cast<std::size_t>(groups * kMR * 2 * steps_ * kStep));
    for (std::int64_t g = 0; g < groups; ++g)
      stage_group(x, g * kMR, group_rows(g, M), k, steps_, xs + group_offset(g));

    if (k <= kMaxExactK) {
      compute(M, 0, steps_, y.ptr<std::int32_t>(), y.stride());
      const std::int64_t nc = static_cast<std::int64_t>(corrections_.size());
      if (nc == 0) return;
      const bool threaded = M * nc > kSerialMacs;
#pragma omp parallel for schedule(static) if (threaded)
      for (std::int64_t m = 0; m < M; ++m) {
        const auto* xr = static_cast<const std::int8_t*>(x.at(m, 0));
        auto* yr = static_cast<std::int32_t*>(y.at(m, 0));
        for (const Correction& cr : corrections_) yr[cr.j] -= xr[cr.i];
      }
      return;
    }
    // Long k: exact int32 chunks of <= kMaxExactK products, summed in int64.
    auto* part = reinterpret_cast<std::int32_t*>(
        scratch32_.get(static_cast<std::size_t>(M * n) * sizeof(std::int32_t)));
    auto* sum = reinterpret_cast<std::int64_t*>(
        scratch64_.get(static_cast<std::size_t>(M * n) * sizeof(std::int64_t)));
    for (std::int64_t s0 = 0; s0 < steps_; s0 += kChunkSteps) {
      compute(M, s0, std::min(s0 + kChunkSteps, steps_), part, n);
      for (std::int64_t e = 0; e < M * n; ++e) sum[e] = (s0 == 0 ? 0 : sum[e]) + part[e];
    }
    for (std::int64_t m = 0; m < M; ++m) {
      const auto* xr = static_cast<const std::int8_t*>(x.at(m, 0));
      for (const Correction& cr : corrections_) sum[m * n + cr.j] -= xr[cr.i];
    }
    for (std::int64_t m = 0; m < M; ++m) {
      auto* out = static_cast<std::int32_t*>(y.at(m, 0));
      for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t v = sum[m * n + j];
        TPL_CHECK_T(v >= std::numeric_limits<std::int32_t>::min() &&
                        v <= std::numeric_limits<std::int32_t>::max(),
                    BackendError, kWhere, "int32 overflow: y[", m, ", ", j, "] = ", v, " (k=", k,
                    ")");
        out[j] = static_cast<std::int32_t>(v);
      }
    }
  }

 private:
  struct Correction {
    std::int64_t j, i;  // W[j, i] == -128, packed as -127
  };

  static int group_rows(std::int64_t g, std::int64_t M) {
    return static_cast<int>(std::min<std::int64_t>(kMR, M - g * kMR));
  }
  std::int64_t group_offset(std::int64_t g) const {
    return g * kMR * 2 * steps_ * kStep;
  }

  // out[m, j] = the products of k steps [s_begin, s_end), rows [0, M) (stride ostride).
  void compute(std::int64_t M, std::int64_t s_begin, std::int64_t s_end, std::int32_t* out,
               std::int64_t ostride) {
    const std::int64_t groups = (M + kMR - 1) / kMR;
    const std::int64_t macs = M * strips_ * kNR * (s_end - s_begin) * kStep;
    const int max_threads = macs < kSerialMacs ? 1 : std::max(1, omp_get_max_threads());
    // One contiguous range of strips (and of row groups, if strips are fewer than threads) each.
    const std::int64_t pn = std::min<std::int64_t>(max_threads, strips_);
    const std::int64_t pm =
        std::min<std::int64_t>(std::max<std::int64_t>(1, max_threads / pn), groups);
    const std::int8_t* xs = stage_.get(0);
    const std::int8_t* w = packed_.get(0);
    const std::int64_t strip_bytes = kNR * steps_ * kStep;
    const std::int64_t n = desc_.n;
    const int nthreads = static_cast<int>(pn * pm);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
      const std::int64_t t = omp_get_thread_num();
      const std::int64_t ti = t % pn, tm = t / pn;
      const std::int64_t st0 = strips_ * ti / pn, st1 = strips_ * (ti + 1) / pn;
      const std::int64_t g0 = groups * tm / pm, g1 = groups * (tm + 1) / pm;
      for (std::int64_t kb = s_begin; kb < s_end; kb += kKBlock) {
        const std::int64_t nsteps = std::min(kKBlock, s_end - kb);
        const bool accumulate = kb != s_begin;
        for (std::int64_t gb = g0; gb < g1; gb += kGroupBlock) {
          const std::int64_t ge = std::min(gb + kGroupBlock, g1);
          for (std::int64_t sb = st0; sb < st1; sb += kStripBlock) {
            const std::int64_t se = std::min(sb + kStripBlock, st1);
            for (std::int64_t g = gb; g < ge; ++g) {
              const int gm = group_rows(g, M);
              const std::int8_t* xp = xs + group_offset(g) + kb * (2 * gm * kStep);
              for (std::int64_t st = sb; st < se; ++st) {
                const std::int8_t* wp = w + st * strip_bytes + kb * (kNR * kStep);
                const int ncols = static_cast<int>(std::min<std::int64_t>(kNR, n - st * kNR));
                std::int32_t* o = out + g * kMR * ostride + st * kNR;
                if (gm == 3)
                  tile<3>(xp, wp, nsteps, o, ostride, ncols, accumulate);
                else if (gm == 2)
                  tile<2>(xp, wp, nsteps, o, ostride, ncols, accumulate);
                else
                  tile<1>(xp, wp, nsteps, o, ostride, ncols, accumulate);
              }
            }
          }
        }
      }
    }
  }

  GemmDesc desc_;
  std::int64_t steps_ = 0;               // k padded to 32, in steps
  std::int64_t strips_ = 0;              // n padded to 4, in strips of 4 rows
  AlignedBuffer packed_;                 // W: [strip][step][4 rows][32]
  AlignedBuffer stage_;                  // x: [group][step][rows: x, then |x|][32], per call
  AlignedBuffer scratch32_, scratch64_;  // k > kMaxExactK only
  std::vector<Correction> corrections_;  // W entries of -128, in (j, i) order; applied row by
                                         // row of y (its row and x's stay in L1)
};

}  // namespace

std::unique_ptr<Gemm> make_avx2_int8_gemm(const GemmDesc& desc, TensorView weight,
                                          TensorView bias) {
  return std::make_unique<Avx2Int8Gemm>(desc, weight, bias);
}

}  // namespace tpl
