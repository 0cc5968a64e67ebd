// Host memory (tpl/memory.h): reading what the machine has, the stack's estimate against what a
// real stack makes resident, and the refusal.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "expect_throw.h"
#include "tpl/communicator.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/memory.h"
#include "tpl/model.h"

namespace tpl {
namespace {

using testing::expect_throw_with;

constexpr double kMiB = 1024.0 * 1024, kGiB = kMiB * 1024;
const std::string kMeminfo =
    "MemTotal:       24000000 kB\nMemFree:        1000 kB\nMemAvailable:   20000000 kB\n";

// Sets an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(HostMemory, MemAvailableWithoutCgroupLimit) {
  const HostMemory m = host_memory_from(kMeminfo, "max\n", "123\n", nullptr);
  EXPECT_DOUBLE_EQ(m.available, 20000000.0 * 1024);
  EXPECT_EQ(m.source, "MemAvailable");
  EXPECT_DOUBLE_EQ(host_memory_from(kMeminfo, "", "", nullptr).available, 20000000.0 * 1024);
}

TEST(HostMemory, CgroupLimitBelowMemAvailableWins) {
  // cgroup v2: 8 GiB limit, 3 GiB used.
  const HostMemory m = host_memory_from(kMeminfo, "8589934592\n", "3221225472\n", nullptr);
  EXPECT_DOUBLE_EQ(m.available, 5 * kGiB);
  EXPECT_NE(m.source.find("cgroup limit 8.0 GiB"), std::string::npos) << m.source;
  // A limit above MemAvailable, or v1's "no limit" (LONG_MAX rounded to pages), does not.
  EXPECT_EQ(host_memory_from(kMeminfo, "107374182400", "0", nullptr).source, "MemAvailable");
  EXPECT_EQ(host_memory_from(kMeminfo, "9223372036854771712", "0", nullptr).source, "MemAvailable");
  // Usage above the limit leaves nothing.
  EXPECT_DOUBLE_EQ(host_memory_from(kMeminfo, "1000", "5000", nullptr).available, 0);
}

TEST(HostMemory, OverrideAndUnreadable) {
  const HostMemory m = host_memory_from(kMeminfo, "1000", "0", "3G");
  EXPECT_DOUBLE_EQ(m.available, 3 * kGiB);
  EXPECT_EQ(m.source, "TPL_MEMORY_AVAILABLE");
  EXPECT_LT(host_memory_from("", "", "", nullptr).available, 0);  // nothing known: no refusal
  expect_throw_with<ConfigError>([] { host_memory_from(kMeminfo, "", "", "lots"); },
                                 "TPL_MEMORY_AVAILABLE = 'lots' is not a byte count");
}

TEST(HostMemory, ParseByteSize) {
  EXPECT_DOUBLE_EQ(parse_byte_size("1000", "x"), 1000);
  EXPECT_DOUBLE_EQ(parse_byte_size("512M", "x"), 512 * kMiB);
  EXPECT_DOUBLE_EQ(parse_byte_size(" 1.5 GiB ", "x"), 1.5 * kGiB);
  EXPECT_DOUBLE_EQ(parse_byte_size("2t", "x"), 2 * kGiB * 1024);
  EXPECT_DOUBLE_EQ(parse_byte_size("64KB", "x"), 64 * 1024);
  for (const char* bad : {"", "-1", "3X", "G", "1e999", "12 MBs"})
    expect_throw_with<ConfigError>([bad] { parse_byte_size(bad, "SIZE"); }, "SIZE = '");
}

TEST(HostMemory, ResidentSetIsReadable) {
  const ResidentMemory r = resident_memory();
  EXPECT_GT(r.now, 1 * kMiB);
  EXPECT_GE(r.peak, r.now);
}

TEST(MemoryEstimate, LaterAllocationsCountTheRuntimeOnce) {
  MemoryEstimate a, b;
  a.add("weights", 100);
  a.add("weights", 50);
  a.transient = 30;
  b.add("weights", 400);
  b.transient = 70;
  a.runtime = 10;
  b.runtime = 10;
  a.then("reference", b);
  EXPECT_DOUBLE_EQ(a.held(), 550);
  EXPECT_DOUBLE_EQ(a.runtime, 10);     // once per process
  EXPECT_DOUBLE_EQ(a.transient, 100);  // small: malloc may keep all of the first's freed blocks
  EXPECT_DOUBLE_EQ(a.total(), 660);
  MemoryEstimate big, later;
  big.transient = 1 * kGiB;
  later.transient = 2 * kGiB;
  big.then("later", later);
  EXPECT_DOUBLE_EQ(big.transient, 2 * kGiB + 64 * kMiB);  // large blocks go back to the kernel
  ASSERT_EQ(a.items.size(), 2u);
  EXPECT_EQ(a.items[0].what, "weights");
  EXPECT_DOUBLE_EQ(a.items[0].bytes, 150);
  EXPECT_NE(a.describe().find("weights 1 MiB + reference 1 MiB + runtime 1 MiB + transient 1 MiB"),
            std::string::npos)
      << a.describe();
}

ModelSpec model_1024() {
  return ModelSpec::from_hf_json({{"model_type", "llama"},
                                  {"hidden_size", 1024},
                                  {"intermediate_size", 4096},
                                  {"num_attention_heads", 8},
                                  {"num_key_value_heads", 2},
                                  {"num_hidden_layers", 2}},
                                 "m1024");
}

Config tp_config(int tp) {
  return Config::from_json({{"tp", tp}, {"dp", 1}, {"pp", 1}});
}

double item(const MemoryEstimate& e, const std::string& what) {
  for (const auto& i : e.items)
    if (i.what == what) return i.bytes;
  return 0;
}

TEST(EstimateStackMemory, FollowsShardingDtypeAndBackend) {
  const ModelSpec m = model_1024();
  // Linear weights per layer: qkv 1536 x 1024, o_proj 1024², gate_up 8192 x 1024, down 1024 x
  // 4096.
  const double elems = 2 * (1536.0 * 1024 + 1024.0 * 1024 + 8192.0 * 1024 + 1024.0 * 4096);
  StackOptions f32;
  const MemoryEstimate one = estimate_stack_memory(m, tp_config(1), f32, 1);
  EXPECT_DOUBLE_EQ(item(one, "weights"), elems * 4);
  EXPECT_DOUBLE_EQ(item(one, "GEMM copies"), elems * 4);  // every f32 implementation copies once
  // Two ranks: each holds half of every sharded weight (these split evenly).
  const MemoryEstimate two = estimate_stack_memory(m, tp_config(2), f32, 2);
  EXPECT_DOUBLE_EQ(item(two, "weights"), elems * 2);
  EXPECT_LT(two.transient, one.transient);
  StackOptions bf16 = f32;
  bf16.dtype = DType::kBF16;
  EXPECT_DOUBLE_EQ(item(estimate_stack_memory(m, tp_config(1), bf16, 1), "weights"), elems * 2);
  StackOptions w8a8 = f32;
  w8a8.w8a8 = true;
  EXPECT_DOUBLE_EQ(item(estimate_stack_memory(m, tp_config(1), w8a8, 1), "weights"), elems);
  StackOptions oracle = f32;
  oracle.backend = GemmBackend::kReference;  // doubles, transposed
  EXPECT_DOUBLE_EQ(item(estimate_stack_memory(m, tp_config(1), oracle, 1), "GEMM copies"),
                   elems * 8);
  // A forward's activations grow with the tokens.
  EXPECT_GT(estimate_stack_memory(m, tp_config(1), f32, 1, 8192).transient,
            estimate_stack_memory(m, tp_config(1), f32, 1, 16).transient);
}

// Every size at ModelSpec::kMaxSize: the estimate's int64 shapes and offsets must not overflow
// (the ASan + UBSan build fails this test if one does) and it asks for about 2^64 bytes.
TEST(EstimateStackMemory, SizesAtTheLimitDoNotOverflow) {
  ModelSpec m = model_1024();
  m.hidden = m.intermediate = m.heads = m.kv_heads = m.head_dim = ModelSpec::kMaxSize;
  m.layers = 2;
  StackOptions f32;
  f32.backend = GemmBackend::kReference;
  for (int tp : {1, 2}) {
    const MemoryEstimate e = estimate_stack_memory(m, tp_config(tp), f32, tp, 1 << 20);
    EXPECT_TRUE(std::isfinite(e.total())) << tp;
    EXPECT_GT(item(e, "weights"), 1e18) << tp;
  }
}

// Layer-sharded o_proj (FC2 P = 1 over 2 ranks, 2 layers, so k = 0): one window of the full
// o_proj in the layer's weight dtype, int8 under W8A8, plus the GEMM planned over it (twice
// while its first plan is timed).
TEST(EstimateStackMemory, LayerShardWindowsFollowTheWeightDtype) {
  const ModelSpec m = model_1024();
  const Config cfg = Config::from_json(
      {{"tp", 2}, {"dp", 1}, {"pp", 1}, {"flashcomm2_p", 1}, {"layer_sharding", {"o_proj"}}});
  const double elems = 1024.0 * 1024;
  const CpuGemmChooser chooser;
  const double plans = chooser.options().measure ? 2 : 1;
  for (bool w8a8 : {false, true}) {
    StackOptions so;
    so.w8a8 = w8a8;
    GemmDesc d;
    d.n = d.k = 1024;
    d.act = d.weight = d.out = w8a8 ? DType::kI8 : DType::kF32;
    if (w8a8) d.out = DType::kI32;
    const double window = elems * (w8a8 ? 1 : 4);
    EXPECT_DOUBLE_EQ(item(estimate_stack_memory(m, cfg, so, 2), "layer-shard windows"),
                     window + plans * elems * chooser.held_bytes_per_weight(d))
        << (w8a8 ? "w8a8" : "f32");
  }
}

// The estimate against what building the stack makes resident (VmRSS): never below it, and
// not far above it.
TEST(EstimateStackMemory, BoundsTheResidentGrowthOfARealStack) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's redzones and quarantine inflate resident memory: no "
                  "estimate of tplinear's own bounds it (scripts/sanitize.sh)";
#endif
  const ModelSpec m = model_1024();
  const auto weights = make_random_weights(5);
  LocalCommunicator one;
  StackOptions so;
  const MemoryEstimate est = estimate_stack_memory(m, tp_config(1), so, 1);
  const double before = resident_memory().now;
  DecoderStack stack(one, m, tp_config(1), *weights, so);
  const double grew = resident_memory().now - before;
  const double tensors = item(est, "weights") + item(est, "GEMM copies");
  EXPECT_LE(grew, est.total()) << est.describe();
  EXPECT_GE(grew, 0.8 * tensors) << est.describe() << ", grew " << grew / kMiB << " MiB";
}

TEST(CheckHostMemory, RefusesWithWhatIsNeededAndAvailable) {
  LocalCommunicator one;
  MemoryEstimate need;
  need.add("weights", 3 * kGiB);
  need.transient = 1 * kGiB;
  {
    ScopedEnv avail("TPL_MEMORY_AVAILABLE", "2G");
    expect_throw_with<OutOfMemory>(
        [&] { check_host_memory(one, need, "the test stack", "use fewer layers"); },
        "not enough host memory for the test stack: rank 0 on node ");
    expect_throw_with<OutOfMemory>(
        [&] { check_host_memory(one, need, "the test stack", "use fewer layers"); },
        "needs 4.0 GiB = weights 3.0 GiB + transient 1.0 GiB, 2.0 GiB available "
        "(TPL_MEMORY_AVAILABLE); use fewer layers");
    ScopedEnv off("TPL_MEMORY_CHECK", "0");
    EXPECT_NO_THROW(check_host_memory(one, need, "the test stack", ""));
  }
  ScopedEnv avail("TPL_MEMORY_AVAILABLE", "5G");
  EXPECT_NO_THROW(check_host_memory(one, need, "the test stack", ""));
}

TEST(CheckHostMemory, DecoderStackRefusesBeforeLoading) {
  const ModelSpec m = model_1024();
  const auto weights = make_random_weights(5);
  LocalCommunicator one;
  ScopedEnv avail("TPL_MEMORY_AVAILABLE", "16M");
  const double before = resident_memory().now;
  expect_throw_with<OutOfMemory>(
      [&] { DecoderStack(one, m, tp_config(1), *weights, StackOptions{}); },
      "not enough host memory for the decoder stack's weights");
  EXPECT_LT(resident_memory().now - before, 16 * kMiB);  // refused before any weight was made
  StackOptions unchecked;
  unchecked.check_memory = false;
  EXPECT_NO_THROW(DecoderStack(one, m, tp_config(1), *weights, unchecked));
}

}  // namespace
}  // namespace tpl
