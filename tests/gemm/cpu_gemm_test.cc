// The CPU GEMM list: ISA detection and the TPL_CPU_ISA cap, the chooser's verdicts and
// measurements, and the exactness probe that keeps a saturating kernel from ever being used.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "gemm/cpu_gemm_impls.h"
#include "harness.h"
#include "tpl/backends.h"
#include "tpl/cpu_gemm.h"
#include "tpl/cpu_isa.h"
#include "tpl/error.h"

namespace tpl {
namespace {

using testing::message_of;

const GemmDesc kF32{256, 64, DType::kF32, DType::kF32, DType::kF32};
const GemmDesc kBf16{256, 64, DType::kBF16, DType::kBF16, DType::kBF16};
const GemmDesc kInt8{256, 64, DType::kI8, DType::kI8, DType::kI32};

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(CpuIsa, DetectsAtLeastTheFloorAndNamesTheCpu) {
  const CpuInfo cpu = detect_cpu();
  EXPECT_FALSE(cpu.model.empty());
  EXPECT_GE(cpu.detected, CpuIsa::kSse41);
  EXPECT_LE(cpu.effective(), cpu.detected);
  // Every level's name parses back to itself.
  for (CpuIsa isa : all_cpu_isas())
    EXPECT_EQ(parse_cpu_isa_cap(cpu_isa_name(isa), CpuIsa::kAvx512CoreAmx), isa);
}

TEST(CpuIsa, BadCapsAreClearErrors) {
  EXPECT_EQ(parse_cpu_isa_cap("", CpuIsa::kAvx2), std::nullopt);
  EXPECT_EQ(parse_cpu_isa_cap("native", CpuIsa::kAvx2), std::nullopt);
  EXPECT_EQ(parse_cpu_isa_cap("avx2", CpuIsa::kAvx512CoreBf16), CpuIsa::kAvx2);
  EXPECT_THROW(parse_cpu_isa_cap("avx3", CpuIsa::kAvx2), ConfigError);
  std::string m = message_of([] { parse_cpu_isa_cap("avx3", CpuIsa::kAvx2); });
  EXPECT_TRUE(has(m, "unknown TPL_CPU_ISA value 'avx3'")) << m;
  EXPECT_TRUE(has(m, "avx2, avx512_core, avx512_core_vnni, avx512_core_bf16")) << m;
  EXPECT_TRUE(has(m, "this CPU supports up to avx2")) << m;
  // A cap above the CPU would promise kernels it cannot run.
  EXPECT_THROW(parse_cpu_isa_cap("avx512_core_vnni", CpuIsa::kAvx2), ConfigError);
  m = message_of([] { parse_cpu_isa_cap("avx512_core_vnni", CpuIsa::kAvx2); });
  EXPECT_TRUE(has(m, "above what this CPU supports (avx2)")) << m;
}

TEST(CpuIsa, EnvironmentCapIsRead) {
  const char* old = std::getenv("TPL_CPU_ISA");
  const std::string saved = old ? old : "";
  setenv("TPL_CPU_ISA", "sse41", 1);
  const CpuInfo cpu = detect_cpu();
  ASSERT_TRUE(cpu.cap.has_value());
  EXPECT_EQ(cpu.effective(), CpuIsa::kSse41);
  setenv("TPL_CPU_ISA", "bogus", 1);
  EXPECT_THROW(detect_cpu(), ConfigError);
  if (old) {
    setenv("TPL_CPU_ISA", saved.c_str(), 1);
  } else {
    unsetenv("TPL_CPU_ISA");
  }
}

CpuInfo capped(CpuIsa cap) {
  CpuInfo cpu = detect_cpu();
  cpu.cap = cap < cpu.detected ? cap : cpu.detected;
  return cpu;
}

CpuGemmOptions table_order() {
  CpuGemmOptions o;
  o.measure = false;
  return o;
}

// What serves is decided by the ISA: a saturating int8 path is never listed as serving.
TEST(CpuGemmChooser, VerdictsFollowTheIsa) {
  CpuGemmChooser avx2(capped(CpuIsa::kAvx2), table_order());
  for (const GemmCandidate& c : avx2.candidates(kInt8)) {
    if (c.name == "onednn" && avx2.cpu().effective() < CpuIsa::kAvx512CoreVnni) {
      EXPECT_TRUE(has(c.why_not, "saturate") || has(c.why_not, "already fixed")) << c.why_not;
    }
    if (c.name == "avx2_int8") {
      if (avx2.cpu().effective() >= CpuIsa::kAvx2) {
        EXPECT_EQ(c.why_not, "");
      } else {  // a CPU without AVX2 (scripts/emulated-cpu.sh runs one)
        EXPECT_TRUE(has(c.why_not, "needs AVX2")) << c.why_not;
      }
    }
    if (c.name == "reference") {
      EXPECT_EQ(c.why_not, "");
    }
  }
  for (const GemmCandidate& c : avx2.candidates(kBf16))
    if (c.name == "onednn") {
      EXPECT_FALSE(c.why_not.empty());
    }
  // Below AVX2 the int8 kernel cannot run either: the reference is the last resort.
  CpuGemmChooser sse(capped(CpuIsa::kSse41), table_order());
  Tensor w(DType::kI8, kInt8.n, kInt8.k);
  EXPECT_EQ(sse.make(kInt8, w, TensorView())->name(), "reference");
  for (const GemmCandidate& c : sse.candidates(kInt8))
    if (c.name == "avx2_int8") {
      EXPECT_TRUE(has(c.why_not, "needs AVX2")) << c.why_not;
    }
  // Nor the 1x1 convolution, whose SSE4.1 kernel in oneDNN 2.6 segfaults.
  bool conv_listed = false;
  for (const GemmCandidate& c : sse.candidates(kF32))
    if (c.name == "onednn_conv") {
      conv_listed = true;
      EXPECT_TRUE(has(c.why_not, "needs AVX2") || has(c.why_not, "already fixed")) << c.why_not;
    }
  EXPECT_TRUE(conv_listed);
}

// The cap changes what runs, not just what is listed: on a VNNI CPU the int8 choice moves from
// oneDNN to tplinear's AVX2 kernel. (Each CTest entry is its own process, so capping oneDNN here
// cannot leak into other tests.)
TEST(CpuGemmChooser, CapChangesTheInt8ImplementationOnVnniCpus) {
  const CpuInfo native = detect_cpu();
  if (native.effective() < CpuIsa::kAvx512CoreVnni)
    GTEST_SKIP() << "needs a CPU with AVX512-VNNI (this one: " << cpu_isa_name(native.effective())
                 << "); here the native run already is the AVX2 run";
  Tensor w = testing::random_ints(kInt8.n, kInt8.k, 100, 3, DType::kI8);
  // Uncapped first: oneDNN's ISA is fixed by its first use, and a cap applied first would stay.
  CpuGemmChooser without(native, table_order());
  for (const GemmCandidate& c : without.candidates(kInt8))
    if (c.name == "onednn" && !c.why_not.empty())
      GTEST_SKIP() << "oneDNN was capped earlier in this process (CTest runs each test alone): "
                   << c.why_not;
  EXPECT_EQ(without.make(kInt8, w, TensorView())->name(), "onednn");
  CpuGemmChooser with_cap(capped(CpuIsa::kAvx2), table_order());
  EXPECT_EQ(with_cap.make(kInt8, w, TensorView())->name(), "avx2_int8");
}

// Under a cap (CTest's *_avx2 entries set TPL_CPU_ISA=avx2) the default CPU GEMM follows it.
TEST(CpuGemmChooser, DefaultBackendHonoursTheEnvironmentCap) {
  const CpuInfo cpu = detect_cpu();
  Tensor w = testing::random_ints(kInt8.n, kInt8.k, 100, 3, DType::kI8);
  const std::string name = make_gemm(GemmBackend::kCpu, kInt8, w, TensorView())->name();
  bool onednn_serves = false;
  for (const GemmCandidate& c : CpuGemmChooser(cpu, table_order()).candidates(kInt8))
    onednn_serves = onednn_serves || (c.name == "onednn" && c.why_not.empty());
  // Below VNNI oneDNN never serves int8; with VNNI it does unless a cap fixed oneDNN lower
  // earlier in this process (CTest runs each test alone, so there it always does).
  if (cpu.effective() < CpuIsa::kAvx512CoreVnni) {
    EXPECT_FALSE(onednn_serves);
  }
  EXPECT_EQ(name, onednn_serves ? "onednn" : cpu.has(CpuIsa::kAvx2) ? "avx2_int8" : "reference");
  Tensor wb = testing::random_ints(kBf16.n, kBf16.k, 3, 4, DType::kBF16);
  const std::string bf16 = make_gemm(GemmBackend::kCpu, kBf16, wb, TensorView())->name();
  if (!cpu.has(CpuIsa::kAvx512Core)) {
    EXPECT_EQ(bf16.rfind("bf16_via_f32:", 0), 0u) << bf16;
  }
}

// Several f32 implementations serve: the chooser times them and says so.
TEST(CpuGemmChooser, MeasuresWhenSeveralServe) {
  CpuGemmOptions o;
  o.measure = true;
  CpuGemmChooser chooser(detect_cpu(), o);
  int serving = 0;
  for (const GemmCandidate& c : chooser.candidates(kF32))
    serving += c.why_not.empty() && c.name != "reference";
  if (serving < 2) GTEST_SKIP() << "only one f32 implementation in this build";
  const GemmChoice c = chooser.explain(kF32, 64);
  EXPECT_EQ(c.how, "measured at M=64");
  int timed = 0;
  for (const GemmCandidate& cand : c.candidates) {
    if (cand.name == "reference") {
      EXPECT_LT(cand.ms, 0) << "the reference is never timed";
    }
    timed += cand.ms >= 0;
  }
  EXPECT_EQ(timed, serving);
  EXPECT_FALSE(c.chosen.empty());
}

TEST(CpuGemmChooser, ForcedImplementationAndBadSettings) {
  CpuGemmOptions o = table_order();
  o.force = {"reference"};
  CpuGemmChooser chooser(detect_cpu(), o);
  Tensor w(DType::kF32, kF32.n, kF32.k);
  EXPECT_EQ(chooser.make(kF32, w, TensorView())->name(), "reference");
  o.force = {"no_such_gemm"};
  EXPECT_THROW(CpuGemmChooser(detect_cpu(), o), ConfigError);
  EXPECT_TRUE(has(message_of([&] { CpuGemmChooser(detect_cpu(), o); }), "avx2_int8"));
  // Forcing an implementation that cannot serve here is an error, not a quiet fallback.
  o.force = {"avx2_int8"};
  CpuGemmChooser sse(capped(CpuIsa::kSse41), o);
  Tensor w8(DType::kI8, kInt8.n, kInt8.k);
  EXPECT_THROW(sse.make(kInt8, w8, TensorView()), Unsupported);
  EXPECT_TRUE(has(message_of([&] { sse.make(kInt8, w8, TensorView()); }), "needs AVX2"));
}

// An int8 kernel that does what oneDNN 2.6 does without VNNI: x + 128 as u8 times s8 weights,
// pair sums saturated to int16 (vpmaddubsw), then the 128 * sum(w) compensation.
class SaturatingInt8Gemm final : public Gemm {
 public:
  SaturatingInt8Gemm(const GemmDesc& d, TensorView w) : desc_(d), w_(Tensor::copy_of(w)) {}
  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "fake_vpmaddubsw"; }
  bool has_bias() const override { return false; }
  void run(TensorView x, TensorView y, bool) override {
    for (std::int64_t m = 0; m < x.rows(); ++m)
      for (std::int64_t j = 0; j < desc_.n; ++j) {
        const auto* xr = static_cast<const std::int8_t*>(x.at(m, 0));
        const auto* wr = w_.ptr<std::int8_t>() + j * desc_.k;
        std::int64_t acc = 0, wsum = 0;
        for (std::int64_t i = 0; i < desc_.k; i += 2) {
          std::int64_t pair = (xr[i] + 128) * wr[i];
          if (i + 1 < desc_.k) pair += (xr[i + 1] + 128) * wr[i + 1];
          acc += std::max<std::int64_t>(-32768, std::min<std::int64_t>(32767, pair));
          wsum += wr[i] + (i + 1 < desc_.k ? wr[i + 1] : 0);
        }
        static_cast<std::int32_t*>(y.at(m, j))[0] = static_cast<std::int32_t>(acc - 128 * wsum);
      }
  }

 private:
  GemmDesc desc_;
  Tensor w_;
};

// The agreement's choice replaces this rank's where it serves; where it cannot serve here (a
// heterogeneous rank) or is unknown, the rank keeps its own choice instead of failing.
TEST(CpuGemmChooser, AgreementOverridesTheLocalChoiceWhereItServes) {
  CpuGemmChooser chooser(detect_cpu(), table_order());
  std::vector<std::string> serving;
  for (const GemmCandidate& c : chooser.candidates(kF32))
    if (c.why_not.empty()) serving.push_back(c.name);
  ASSERT_GE(serving.size(), 2u) << "the reference and at least one library serve f32";
  Tensor w = testing::random_ints(kF32.n, kF32.k, 8, 6, DType::kF32);
  std::string local;
  EXPECT_EQ(chooser.make(kF32, w, TensorView(), &local)->name(), serving.front());
  EXPECT_EQ(local, serving.front());
  // The last serving one (the reference): never the table's own pick.
  std::string asked;
  std::vector<std::string> seen;
  chooser.set_agreement([&](const GemmDesc& d, const std::string& mine) {
    EXPECT_EQ(d.n, kF32.n);
    seen.push_back(mine);
    return asked;
  });
  asked = serving.back();
  std::string got;
  EXPECT_EQ(chooser.make(kF32, w, TensorView(), &got)->name(), serving.back());
  EXPECT_EQ(got, serving.back());
  // A choice that cannot serve f32 here, and one this build does not have: keep the local one.
  for (const char* other : {"avx2_int8", "no_such_gemm"}) {
    asked = other;
    EXPECT_EQ(chooser.make(kF32, w, TensorView(), &got)->name(), serving.front()) << other;
    EXPECT_EQ(got, serving.front()) << other;
  }
  EXPECT_EQ(seen, std::vector<std::string>(3, serving.front()));
}

// The agreement is a collective: every rank must call it once per make(), whatever it measured
// or cached before. bf16_via_f32 builds its f32 GEMM through make() while it is being measured;
// those inner makes must not reach the agreement (ranks with other shapes, e.g. uneven heads,
// measure and cache differently and would call it a different number of times: a hang).
TEST(CpuGemmChooser, AgreementOncePerMakeWhateverIsMeasuredInside) {
  CpuGemmOptions o = table_order();
  o.measure = true;
  o.m_hint = 16;
  CpuGemmChooser chooser(detect_cpu(), o);
  std::vector<std::string> seen;
  chooser.set_agreement([&](const GemmDesc& d, const std::string& mine) {
    seen.push_back(std::string(dtype_name(d.act)) + " n=" + std::to_string(d.n) + " " + mine);
    return mine;
  });
  int makes = 0;
  for (std::int64_t n : {std::int64_t{24}, std::int64_t{48}, std::int64_t{24}})
    for (const GemmDesc& base : {kBf16, kF32, kBf16}) {
      GemmDesc d = base;
      d.n = n;
      Tensor w = testing::random_ints(d.n, d.k, 3, static_cast<int>(n), d.weight);
      chooser.make(d, w, TensorView());
      ++makes;
      ASSERT_EQ(seen.size(), static_cast<std::size_t>(makes))
          << "make #" << makes << " (" << dtype_name(d.act) << " n=" << n
          << ") reached the agreement " << seen.size() << " times in all; last: " << seen.back();
    }
}

TEST(CpuGemmChooser, MakeAsPlansTheNamedImplementationOrSaysWhyNot) {
  CpuGemmChooser chooser(detect_cpu(), table_order());
  Tensor w = testing::random_ints(kF32.n, kF32.k, 8, 7, DType::kF32);
  EXPECT_EQ(chooser.make_as("reference", kF32, w, TensorView())->name(), "reference");
  const std::string m = message_of([&] { chooser.make_as("avx2_int8", kF32, w, TensorView()); });
  EXPECT_TRUE(has(m, "'avx2_int8' cannot serve f32")) << m;
  const std::string u = message_of([&] { chooser.make_as("no_such_gemm", kF32, w, TensorView()); });
  EXPECT_TRUE(has(u, "no CPU GEMM implementation named 'no_such_gemm'")) << u;
}

TEST(CpuGemmChooser, ProbeRejectsASaturatingKernel) {
  std::vector<CpuGemmImpl> impls;
  // Listed under the AVX2 kernel's name, so the list puts it first for int8.
  impls.push_back({"avx2_int8", [](const GemmDesc&, const CpuInfo&) { return std::string(); },
                   [](const GemmDesc& d, TensorView w, TensorView, const GemmFactory&) {
                     return std::unique_ptr<Gemm>(new SaturatingInt8Gemm(d, w));
                   }});
  impls.push_back({"reference", [](const GemmDesc&, const CpuInfo&) { return std::string(); },
                   [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                     return make_reference_gemm(d, w, b);
                   }});
  CpuGemmChooser chooser(detect_cpu(), table_order(), impls);
  Tensor w = testing::random_ints(kInt8.n, kInt8.k, 20, 5, DType::kI8);
  EXPECT_THROW(chooser.make(kInt8, w, TensorView()), BackendError);
  const std::string m = message_of([&] { chooser.make(kInt8, w, TensorView()); });
  EXPECT_TRUE(has(m, "'fake_vpmaddubsw' failed its exactness probe")) << m;
  EXPECT_TRUE(has(m, "reference")) << m;
}

}  // namespace
}  // namespace tpl
