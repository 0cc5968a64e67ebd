// Exact int8 x int8 -> int32 GEMM for x86-64 CPUs with AVX2 but without AVX-512 VNNI (W8A8 on
// AMD Zen 2/3, Intel Haswell..Alder Lake client parts).
#pragma once

#include <memory>

#include "tpl/gemm.h"

namespace tpl {

// y[m, j] = sum_i x[m, i] * W[j, i], bit-exact in int32 (the same results as the reference GEMM):
// desc must be act=int8, weight=int8, out=int32 (Unsupported otherwise) and bias must be empty
// (InvalidArgument). Any int8 values are exact, -128 included (weights of -128 take a slower,
// sparse correction path, so symmetric -127..127 weights are the fast case). For k <= 131071
// no int32 sum can overflow; above that, sums are kept in int64 and an output that does not fit
// int32 throws BackendError, as the reference does. W is packed at creation (the caller's weight
// need not outlive the Gemm). The CPU must support AVX2: the caller checks before creating one.
// name() is "avx2_int8"; run() threads over OpenMP's omp_get_max_threads().
std::unique_ptr<Gemm> make_avx2_int8_gemm(const GemmDesc& desc, TensorView weight, TensorView bias);

}  // namespace tpl
