#include "info.h"

#include <fmt/core.h>
#include <omp.h>

#include <string>
#include <vector>

#include "tpl/backends.h"
#include "tpl/cpu_gemm.h"
#include "tpl/cpu_isa.h"

namespace tpl::cli {

int run_info(Communicator& world, const InfoOptions& options) {
  // Every rank parses TPL_CPU_ISA (a bad value fails on all of them alike); rank 0 reports.
  CpuGemmOptions go = CpuGemmOptions::from_env();
  go.measure = options.measure;
  CpuGemmChooser chooser(detect_cpu(), go);
  if (world.rank() != 0) return 0;
  const CpuInfo& cpu = chooser.cpu();
  std::string features;
  for (const auto& f : cpu.features) features += (features.empty() ? "" : " ") + f;
  fmt::print("cpu: {}\n", cpu.model);
  fmt::print("features: {}\n", features);
  fmt::print("isa: {} (detected {}; cap: {})\n", cpu_isa_name(cpu.effective()),
             cpu_isa_name(cpu.detected),
             cpu.cap ? std::string("TPL_CPU_ISA=") + cpu_isa_name(*cpu.cap) : "none");
  fmt::print("threads per rank: {} (OMP_NUM_THREADS; oneDNN, OpenBLAS and avx2_int8 follow it)\n",
             chooser.threads());
  for (const std::string& lib : cpu_gemm_libraries(cpu)) fmt::print("library: {}\n", lib);
  fmt::print("mpi: {}\n", mpi_library_version());
  fmt::print("communicator: {}\n",
             options.communicator.empty() ? world.name() : options.communicator);
  std::string built;
  for (const auto& b : built_backends()) built += (built.empty() ? "" : " ") + b;
  fmt::print("backends built: {}\n", built);
  fmt::print("gemm choice, y[M, n={}] = x[M, k={}] W^T, {}:\n", options.n, options.k,
             options.measure ? "timed where several serve" : "list order");
  const DType configs[][3] = {{DType::kF32, DType::kF32, DType::kF32},
                              {DType::kBF16, DType::kBF16, DType::kBF16},
                              {DType::kI8, DType::kI8, DType::kI32}};
  for (const auto& c : configs) {
    const GemmDesc d{options.k, options.n, c[0], c[1], c[2]};
    for (std::int64_t m : {1, 16, 256, 2048}) {
      const GemmChoice choice = chooser.explain(d, m);
      fmt::print("  {:<5} M={:<5} {:<22} ({})\n", dtype_name(c[0]), m, choice.chosen, choice.how);
      for (const GemmCandidate& cand : choice.candidates) {
        if (cand.name == choice.chosen) continue;
        std::string why;
        if (!cand.why_not.empty()) {
          why = "does not serve: " + cand.why_not;
        } else if (cand.ms >= 0) {
          double chosen_ms = -1;
          for (const auto& o : choice.candidates)
            if (o.name == choice.chosen) chosen_ms = o.ms;
          // A later one must win by 10 % (the chooser's margin against timing noise).
          why = cand.ms < chosen_ms
                    ? fmt::format("within 10 % of the earlier-listed {}: {:.3f} ms vs {:.3f} ms",
                                  choice.chosen, cand.ms, chosen_ms)
                    : fmt::format("slower: {:.3f} ms vs {:.3f} ms", cand.ms, chosen_ms);
        } else if (cand.name == "reference") {
          why = "last resort (exact, slow; never timed)";
        } else {
          why = "after " + choice.chosen + " in list order";
        }
        fmt::print("      {:<20} {}\n", cand.name, why);
      }
    }
  }
  return 0;
}

}  // namespace tpl::cli
