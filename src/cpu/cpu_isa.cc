// CPU feature detection (cpuid through GCC's __builtin_cpu_supports) and the TPL_CPU_ISA cap.
#include "tpl/cpu_isa.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "tpl/error.h"

namespace tpl {
namespace {

const Where kWhere{"cpu_isa"};

std::string model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) break;
    const auto start = line.find_first_not_of(' ', colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kSse41:
      return "sse41";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvx512Core:
      return "avx512_core";
    case CpuIsa::kAvx512CoreVnni:
      return "avx512_core_vnni";
    case CpuIsa::kAvx512CoreBf16:
      return "avx512_core_bf16";
    case CpuIsa::kAvx512CoreAmx:
      return "avx512_core_amx";
  }
  return "?";
}

std::vector<CpuIsa> all_cpu_isas() {
  return {CpuIsa::kSse41,          CpuIsa::kAvx2,           CpuIsa::kAvx512Core,
          CpuIsa::kAvx512CoreVnni, CpuIsa::kAvx512CoreBf16, CpuIsa::kAvx512CoreAmx};
}

std::optional<CpuIsa> parse_cpu_isa_cap(const std::string& value, CpuIsa detected) {
  if (value.empty() || value == "native") return std::nullopt;
  std::ostringstream valid;
  for (CpuIsa isa : all_cpu_isas()) valid << cpu_isa_name(isa) << ", ";
  valid << "native";
  for (CpuIsa isa : all_cpu_isas()) {
    if (value != cpu_isa_name(isa)) continue;
    TPL_CHECK_T(isa <= detected, ConfigError, kWhere, "TPL_CPU_ISA=", value,
                " is above what this CPU supports (", cpu_isa_name(detected),
                "); a cap can only lower the level. Valid values: ", valid.str());
    return isa;
  }
  TPL_THROW(ConfigError, kWhere, "unknown TPL_CPU_ISA value '", value, "' (valid: ", valid.str(),
            "; this CPU supports up to ", cpu_isa_name(detected), ")");
}

CpuInfo detect_cpu() {
  CpuInfo info;
  info.model = model_name();
  __builtin_cpu_init();
  struct Feature {
    const char* name;
    bool present;
  };
  // Names as in /proc/cpuinfo.
  const Feature features[] = {
      {"sse4_1", __builtin_cpu_supports("sse4.1") != 0},
      {"avx2", __builtin_cpu_supports("avx2") != 0},
      {"fma", __builtin_cpu_supports("fma") != 0},
      {"avx512f", __builtin_cpu_supports("avx512f") != 0},
      {"avx512bw", __builtin_cpu_supports("avx512bw") != 0},
      {"avx512vl", __builtin_cpu_supports("avx512vl") != 0},
      {"avx512dq", __builtin_cpu_supports("avx512dq") != 0},
      {"avx512_vnni", __builtin_cpu_supports("avx512vnni") != 0},
      {"avx512_bf16", __builtin_cpu_supports("avx512bf16") != 0},
      {"amx_tile", __builtin_cpu_supports("amx-tile") != 0},
      {"amx_int8", __builtin_cpu_supports("amx-int8") != 0},
      {"amx_bf16", __builtin_cpu_supports("amx-bf16") != 0},
  };
  auto has = [&](const char* name) {
    for (const auto& f : features)
      if (std::string(f.name) == name) return f.present;
    return false;
  };
  for (const auto& f : features)
    if (f.present) info.features.push_back(f.name);
  CpuIsa level = CpuIsa::kSse41;
  if (has("avx2") && has("fma")) level = CpuIsa::kAvx2;
  if (level == CpuIsa::kAvx2 && has("avx512f") && has("avx512bw") && has("avx512vl") &&
      has("avx512dq"))
    level = CpuIsa::kAvx512Core;
  if (level == CpuIsa::kAvx512Core && has("avx512_vnni")) level = CpuIsa::kAvx512CoreVnni;
  if (level == CpuIsa::kAvx512CoreVnni && has("avx512_bf16")) level = CpuIsa::kAvx512CoreBf16;
  if (level == CpuIsa::kAvx512CoreBf16 && has("amx_tile") && has("amx_int8") && has("amx_bf16"))
    level = CpuIsa::kAvx512CoreAmx;
  info.detected = level;
  const char* env = std::getenv("TPL_CPU_ISA");
  info.cap = parse_cpu_isa_cap(env ? env : "", level);
  return info;
}

}  // namespace tpl
