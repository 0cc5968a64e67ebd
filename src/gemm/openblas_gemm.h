// OpenBLAS sgemm behind the Gemm interface (f32 only: Debian's OpenBLAS 0.3.21 exports no bf16
// and has no int8 GEMM). The only file pair that includes OpenBLAS's headers.
#pragma once

#include <memory>
#include <string>

#include "tpl/gemm.h"

namespace tpl {

// f32 x f32 -> f32 (+ f32 bias). The weight is copied once, transposed, into a dense [k, n] f32
// copy (the caller's view need not outlive the Gemm); every run is one cblas_sgemm(NoTrans,
// NoTrans) on the caller's strided x and y (cblas_sgemv at M = 1), plus the bias added in f32 (as
// oneDNN does: the f32 sum, then + bias, rounded once each). `threads`: OpenBLAS threads per call
// (openblas_set_num_threads before each run when it differs; the setting is OpenBLAS's,
// process-wide).
std::unique_ptr<Gemm> make_openblas_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                         int threads);

// "OpenBLAS 0.3.21 (Zen, DYNAMIC_ARCH ...)": version, core and build flags as OpenBLAS reports
// them.
std::string openblas_description();

}  // namespace tpl
