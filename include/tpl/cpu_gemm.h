// The CPU GEMM: an ordered list of implementations, chosen per dtype and shape by what the CPU
// can do and by measurement (docs/gemm.md has the table).
//
// For a GemmDesc each implementation either serves or says why not (its dtypes, the ISA, a
// library that was not built, a kernel that could saturate). Among those that serve, the
// chooser takes the fastest at a representative row count (m_hint), timed once per (dtypes, n, k)
// and cached in the chooser; the reference (exact, slow) is the last resort and is never
// timed. Before an implementation is first used for a dtype, it is checked once against the
// reference on a small full-range probe (int8: the pairs that saturate vpmaddubsw); a mismatch
// is a BackendError naming the implementation, never a silent wrong answer.
//
// Environment (read by CpuGemmOptions::from_env):
//   TPL_CPU_ISA      caps the ISA (see tpl/cpu_isa.h)
//   TPL_GEMM_SELECT  "measure" (default for a chooser the caller owns) or "table" (first that
//                    serves, in the order of docs/gemm.md; the default when make_gemm is called
//                    without a chooser)
//   TPL_GEMM_M       the row count a layer's choice is timed at (default 256; a Gemm keeps one
//                    implementation for every M, so set it to the batch that dominates)
//   TPL_GEMM         comma list of implementation names to force where they apply to the dtype,
//                    e.g. "openblas,avx2_int8" (Unsupported if a forced one cannot serve)
//   TPL_LOG          contains "gemm": one line on stderr per choice, with the timings
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "tpl/cpu_isa.h"
#include "tpl/gemm.h"

namespace tpl {

struct CpuGemmImpl;  // one entry of the list (src/gemm/cpu_gemm_impls.h)
class Communicator;

// Makes the ranks' choices agree: given this rank's choice for desc, returns the one every rank
// uses. A collective: with an agreement set, every rank must call CpuGemmChooser::make() the same
// number of times in the same order (DecoderStack builds every layer on every rank in one order).
using GemmAgreement =
    std::function<std::string(const GemmDesc& desc, const std::string& local_choice)>;

struct GemmCandidate {
  std::string name;
  std::string why_not;  // empty: serves
  double ms = -1;       // time of one run at the measured M; < 0: not timed
};

struct GemmChoice {
  std::string chosen;  // implementation name
  std::string how;     // "only one serves", "measured at M=256", "table order", "TPL_GEMM"
  std::vector<GemmCandidate> candidates;  // in list order
};

struct CpuGemmOptions {
  bool measure = true;
  std::int64_t m_hint = 256;       // rows a make() choice is timed at (TPL_GEMM_M)
  std::vector<std::string> force;  // TPL_GEMM
  bool log = false;
  int threads = 0;  // per GEMM call; 0 = omp_get_max_threads() (OMP_NUM_THREADS)
  // From the environment; `measure_default` applies when TPL_GEMM_SELECT is unset. ConfigError
  // on an unknown TPL_GEMM_SELECT value.
  static CpuGemmOptions from_env(bool measure_default = true);
};

class CpuGemmChooser {
 public:
  CpuGemmChooser(CpuInfo cpu, CpuGemmOptions options);
  // With an explicit list instead of the build's (tests: a deliberately wrong implementation).
  CpuGemmChooser(CpuInfo cpu, CpuGemmOptions options, std::vector<CpuGemmImpl> impls);
  CpuGemmChooser();  // detect_cpu() and CpuGemmOptions::from_env()
  ~CpuGemmChooser();
  CpuGemmChooser(const CpuGemmChooser&) = delete;
  CpuGemmChooser& operator=(const CpuGemmChooser&) = delete;

  // Plans a GEMM for this weight on the implementation chosen for (desc, options().m_hint).
  // Unsupported when nothing serves desc (or a forced implementation cannot). With an agreement
  // set, the agreed implementation replaces this rank's choice where it serves desc here (a
  // rank whose CPU cannot run it keeps its own and says so on stderr). `chosen`, if given,
  // receives the implementation's name, for make_as().
  std::unique_ptr<Gemm> make(const GemmDesc& desc, TensorView weight, TensorView bias,
                             std::string* chosen = nullptr);
  // Plans on the named implementation: no timing, no agreement (a layer re-planning a weight
  // it already chose for). Unsupported when it cannot serve desc.
  std::unique_ptr<Gemm> make_as(const std::string& impl, const GemmDesc& desc, TensorView weight,
                                TensorView bias);
  // Measured choices can differ per rank (timings on a shared machine vary by 10-25 %), and
  // ranks computing a replicated result on different implementations would round differently.
  void set_agreement(GemmAgreement agreement) { agreement_ = std::move(agreement); }
  // The choice for (desc, m) with every candidate's verdict; times the serving ones on random
  // data of desc's shape when several serve and options().measure. Does not fill the cache.
  GemmChoice explain(const GemmDesc& desc, std::int64_t m);
  // The implementations of this build listed for desc's dtypes, in list order, each with why it
  // cannot serve desc on this CPU ("" when it can). Nothing is planned or timed.
  std::vector<GemmCandidate> candidates(const GemmDesc& desc) const;

  // Bytes per weight element that the GEMM make(desc) plans keeps (its packed or widened copy):
  // the most over the implementations that may be chosen (the forced one, or every one that
  // serves, since the measured choice is made later). For memory estimates (tpl/memory.h).
  double held_bytes_per_weight(const GemmDesc& desc) const;
  const CpuInfo& cpu() const { return cpu_; }
  const CpuGemmOptions& options() const { return options_; }
  int threads() const;

 private:
  using Impl = CpuGemmImpl;
  // dtypes, n, k: every choice of one chooser is timed at the same M (options().m_hint).
  using Key = std::tuple<int, int, int, std::int64_t, std::int64_t>;
  std::unique_ptr<Gemm> make_impl(const Impl& impl, const GemmDesc& desc, TensorView weight,
                                  TensorView bias);
  std::vector<const Impl*> ordered(const GemmDesc& desc) const;
  const Impl& impl_named(const std::string& name) const;
  GemmChoice decide(const GemmDesc& desc, std::int64_t m, TensorView weight, TensorView bias,
                    std::unique_ptr<Gemm>* keep);
  void probe_once(const Impl& impl, const GemmDesc& desc);

  CpuInfo cpu_;
  CpuGemmOptions options_;
  std::vector<Impl> impls_;
  std::map<Key, std::string> cache_;  // measured choices, at m_hint
  std::set<std::string> probed_;      // "<impl>/<dtypes>" checked against the reference
  GemmAgreement agreement_;
  // > 0 while an implementation builds its inner GEMM through make() (bf16_via_f32's f32 one).
  // Those inner choices take the table order, unmeasured and not agreed: how many a rank makes
  // depends on what it measured and cached, which differs between ranks holding different
  // shapes (uneven head splits), and the agreement is a collective that must be called the same
  // number of times on every rank.
  int nesting_ = 0;
};

// Every rank takes `root`'s choice: one broadcast of the name over comm per make().
GemmAgreement gemm_agreement_from_root(Communicator& comm, int root = 0);

// The chooser callers get when they bring none (make_gemm, a LinearLayer without
// OpEnv::cpu_gemm): detect_cpu() and the environment's options, but list order unless
// TPL_GEMM_SELECT=measure, so that unit tests and one-off GEMMs stay deterministic and untimed.
std::unique_ptr<CpuGemmChooser> make_default_cpu_gemm_chooser();

// "cpu_model | isa (cap) | libraries": the CPU GEMM's view of this machine, for `tplinear info`.
std::vector<std::string> cpu_gemm_libraries(const CpuInfo& cpu);

}  // namespace tpl
