// One entry of the CPU GEMM implementation list. The registry (src/backends/registry.cc) knows
// which were built and lists them; the chooser (cpu_gemm_chooser.cc) orders and picks.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gemm/bf16_via_f32_gemm.h"
#include "tpl/cpu_isa.h"
#include "tpl/gemm.h"

namespace tpl {

struct CpuGemmImpl {
  std::string name;
  // "" when it serves desc on cpu; otherwise the reason, in words a user can act on.
  std::function<std::string(const GemmDesc&, const CpuInfo&)> why_not;
  // Plans it. `f32` plans an f32 GEMM, for implementations that compute in f32.
  std::function<std::unique_ptr<Gemm>(const GemmDesc&, TensorView weight, TensorView bias,
                                      const GemmFactory& f32)>
      make;
  // Bytes it keeps per weight element once planned (its packed or widened copy of the weight),
  // for the memory estimate made before any weight is loaded (tpl/memory.h).
  std::function<double(const GemmDesc&)> held_bytes;
};

// What the reference GEMM keeps per weight element (it also serves GemmBackend::kReference).
double reference_gemm_held_bytes(const GemmDesc& desc);

// The CPU implementations of this build; `threads` per GEMM call for the libraries that take it.
std::vector<CpuGemmImpl> built_cpu_gemm_impls(int threads);

}  // namespace tpl
