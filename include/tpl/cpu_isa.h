// x86-64 instruction-set levels, as the CPU GEMMs see them.
//
// The levels follow oneDNN's order; each includes every level before it. The CPU's level is read
// from cpuid once per detect_cpu() call (with the OS's consent for AVX-512 state, as GCC's
// __builtin_cpu_supports checks it). TPL_CPU_ISA caps it, so that every lower path can run on
// a higher machine: the cap limits tplinear's own choice of GEMM implementation and oneDNN's
// JIT (dnnl::set_max_cpu_isa). OpenBLAS picks its kernels when it loads, before any code of ours
// runs; set OPENBLAS_CORETYPE (e.g. Haswell) in the environment to cap it too.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace tpl {

enum class CpuIsa {
  kSse41,           // the x86-64 floor tplinear supports
  kAvx2,            // AVX2 + FMA
  kAvx512Core,      // AVX-512 F, BW, VL, DQ
  kAvx512CoreVnni,  // + VNNI (vpdpbusd: u8 x s8 dot products into int32 without saturation)
  kAvx512CoreBf16,  // + AVX512_BF16 (vdpbf16ps)
  kAvx512CoreAmx,   // + AMX tiles (int8 and bf16)
};

// "sse41", "avx2", "avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx".
const char* cpu_isa_name(CpuIsa isa);
std::vector<CpuIsa> all_cpu_isas();

struct CpuInfo {
  std::string model;                  // /proc/cpuinfo "model name", or "unknown"
  std::vector<std::string> features;  // the features the levels are built from, e.g. "avx2"
  CpuIsa detected = CpuIsa::kSse41;   // the highest level the CPU and the OS support
  std::optional<CpuIsa> cap;          // TPL_CPU_ISA, when set
  // The level the GEMMs may use: min(detected, cap).
  CpuIsa effective() const { return cap && *cap < detected ? *cap : detected; }
  bool has(CpuIsa isa) const { return effective() >= isa; }
};

// Parses a TPL_CPU_ISA value against the detected level. ConfigError when `value` is not one of
// the names above or is above `detected`; the message lists the valid values and the CPU's
// level. "native" (or an empty value) means no cap.
std::optional<CpuIsa> parse_cpu_isa_cap(const std::string& value, CpuIsa detected);

// Reads cpuid and TPL_CPU_ISA (see parse_cpu_isa_cap).
CpuInfo detect_cpu();

}  // namespace tpl
