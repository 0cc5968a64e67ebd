// GEMM backends: the reference oracle on hand-checked cases, and oneDNN against the reference.
// The oneDNN tests go through the registry (make_gemm) and skip in builds without oneDNN.
//
// Accuracy bounds (relative L2 error ||y - ref|| / ||ref||, ref = reference GEMM in double on
// the same, already-rounded inputs):
//  * f32 -> f32: <= 1e-6 on N(0, 1) data (f32 accumulation over k <= 512; measured ~3e-7);
//  * bf16 x bf16 -> f32: <= 1e-5 (products are exact in f32, only the f32 sums round);
//  * bf16 x bf16 -> bf16: <= 1e-2 (one bf16 rounding of the output, 2^-9 relative, dominates);
//  * small-integer data: bit-exact for every dtype pair (all partial sums are exact, the
//    output is rounded once by both).
//  * int8 x int8 -> int32 (W8A8): bit-exact against the reference's exact integer sums, on
//    uniform int8 data covering the full range [-128, 127] for both operands.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "harness.h"
#include "tpl/backends.h"
#include "tpl/cpu_gemm.h"
#include "tpl/cpu_isa.h"
#include "tpl/error.h"
#include "tpl/gemm.h"

namespace tpl {

// Test names and failure messages show the backend's name (found by ADL from gtest).
[[maybe_unused]] static void PrintTo(GemmBackend b, std::ostream* os) {
  *os << gemm_backend_name(b);
}

namespace {

using testing::message_of;

using testing::compare;
using testing::random_ints;
using testing::random_normal;

bool onednn_built() {
  const std::vector<GemmBackend> v = available_gemm_backends();
  return std::find(v.begin(), v.end(), GemmBackend::kOneDnn) != v.end();
}

constexpr const char* kNoOneDnn = "oneDNN is not built (TPL_ONEDNN)";

std::unique_ptr<Gemm> make_onednn(const GemmDesc& desc, TensorView weight, TensorView bias) {
  return make_gemm(GemmBackend::kOneDnn, desc, weight, bias);
}

double rel_l2(const TensorView& actual, const TensorView& expected) {
  double num = 0, den = 0;
  for (std::int64_t r = 0; r < expected.rows(); ++r) {
    for (std::int64_t c = 0; c < expected.cols(); ++c) {
      const double e = get_f32(expected, r, c);
      const double d = get_f32(actual, r, c) - e;
      num += d * d;
      den += e * e;
    }
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// Reference result in f32 (unrounded to the output dtype), computed from the same inputs.
Tensor reference(const GemmDesc& desc, const TensorView& w, const TensorView& bias,
                 const TensorView& x, bool with_bias) {
  GemmDesc d = desc;
  d.out = DType::kF32;
  auto ref = make_reference_gemm(d, w, bias);
  Tensor y(DType::kF32, x.rows(), desc.n);
  ref->run(x, y, with_bias);
  return y;
}

double bound_for(const GemmDesc& d) {
  if (d.act == DType::kF32) return 1e-6;
  return d.out == DType::kF32 ? 1e-5 : 1e-2;
}

// ---------------------------------------------------------------------------------------------
// Reference GEMM on hand-computed values.

TEST(ReferenceGemm, HandComputedWithBias) {
  const GemmDesc desc{3, 2, DType::kF32, DType::kF32, DType::kF32};
  Tensor w = Tensor::from_f32({1, 0, -1, 2, 1, 0}, 2, 3);
  Tensor b = Tensor::from_f32({0.5f, -1.f}, 1, 2);
  Tensor x = Tensor::from_f32({1, 2, 3, -1, 0, 4}, 2, 3);
  auto g = make_reference_gemm(desc, w, b);
  EXPECT_TRUE(g->has_bias());
  EXPECT_EQ(g->name(), "reference");
  Tensor y(DType::kF32, 2, 2);
  g->run(x, y, true);
  EXPECT_EQ(compare(y, Tensor::from_f32({-1.5f, 3.f, -4.5f, -3.f}, 2, 2), 0, 0, "with bias"), "");
  g->run(x, y, false);
  EXPECT_EQ(compare(y, Tensor::from_f32({-2.f, 4.f, -5.f, -2.f}, 2, 2), 0, 0, "no bias"), "");
}

// 1 + 2^-8 + 2^-30 lies just above the bf16 tie between 1 and 1 + 2^-7. Rounding through f32
// first would land exactly on the tie (and round to even: 1); rounding once gives 1 + 2^-7.
TEST(ReferenceGemm, Bf16OutputIsRoundedOnce) {
  const GemmDesc desc{3, 1, DType::kF32, DType::kF32, DType::kBF16};
  Tensor w = Tensor::from_f32({1, 1, 1}, 1, 3);
  Tensor x = Tensor::from_f32({1.f, std::ldexp(1.f, -8), std::ldexp(1.f, -30)}, 1, 3);
  Tensor y(DType::kBF16, 1, 1);
  make_reference_gemm(desc, w, TensorView())->run(x, y, false);
  EXPECT_EQ(y.ptr<std::uint16_t>()[0], 0x3F81) << get_f32(y, 0, 0);
}

TEST(ReferenceGemm, ReadsMixedFloatDtypes) {
  const GemmDesc desc{4, 3, DType::kBF16, DType::kF16, DType::kF32};
  Tensor w = random_ints(3, 4, 4, 1, DType::kF16);
  Tensor x = random_ints(5, 4, 4, 2, DType::kBF16);
  Tensor b = random_ints(1, 3, 4, 3, DType::kBF16);
  Tensor y(DType::kF32, 5, 3);
  make_reference_gemm(desc, w, b)->run(x, y, true);
  for (int m = 0; m < 5; ++m) {
    for (int j = 0; j < 3; ++j) {
      float e = get_f32(b, 0, j);
      for (int i = 0; i < 4; ++i) e += get_f32(x, m, i) * get_f32(w, j, i);
      EXPECT_EQ(get_f32(y, m, j), e) << m << "," << j;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Every CPU implementation against the reference, for each dtype configuration it is listed for.
// An implementation that does not serve a configuration on this CPU (or under TPL_CPU_ISA)
// skips with the reason the chooser gives.

struct Config {
  DType act, weight, out;
};
std::string config_name(const Config& c) {
  return std::string(dtype_name(c.act)) + "x" + dtype_name(c.weight) + "_to_" + dtype_name(c.out);
}
const Config kConfigs[] = {{DType::kF32, DType::kF32, DType::kF32},
                           {DType::kBF16, DType::kBF16, DType::kBF16},
                           {DType::kBF16, DType::kBF16, DType::kF32}};

// (implementation, config) pairs of this build, the reference excluded (it is the oracle).
std::vector<std::tuple<std::string, Config>> impl_pairs() {
  std::vector<std::tuple<std::string, Config>> v;
  for (const Config& c : kConfigs)
    for (const std::string& impl : testing::listed_impls(GemmDesc{1, 1, c.act, c.weight, c.out}))
      v.emplace_back(impl, c);
  return v;
}

using Param = std::tuple<std::tuple<std::string, Config>, std::int64_t, std::int64_t>;

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto& [ic, k, n] = info.param;
  return std::get<0>(ic) + "_" + config_name(std::get<1>(ic)) + "_k" + std::to_string(k) + "_n" +
         std::to_string(n);
}

class ImplVsReference : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    const std::string why = testing::why_impl_cannot_serve(impl(), desc());
    if (!why.empty()) GTEST_SKIP() << impl() << ": " << why;
  }
  const std::string& impl() const { return std::get<0>(std::get<0>(GetParam())); }
  GemmDesc desc() const {
    const auto& [ic, k, n] = GetParam();
    const Config& c = std::get<1>(ic);
    return GemmDesc{k, n, c.act, c.weight, c.out};
  }
  std::unique_ptr<Gemm> make(const GemmDesc& d, TensorView w, TensorView b) const {
    auto g = testing::make_impl_gemm(impl(), d, w, b);
    EXPECT_EQ(g->name().rfind(impl(), 0), 0u) << g->name();
    return g;
  }
};

TEST_P(ImplVsReference, RandomNormalAllM) {
  const GemmDesc d = desc();
  Tensor w = random_normal(d.n, d.k, 1.f, 11, d.weight);
  Tensor b = random_normal(1, d.n, 1.f, 12, DType::kF32);
  auto g = make(d, w, b);
  EXPECT_TRUE(g->has_bias());
  for (bool with_bias : {false, true}) {
    for (std::int64_t m : {0, 1, 3, 7, 16, 1001}) {
      SCOPED_TRACE("M=" + std::to_string(m) + (with_bias ? " with bias" : " without bias"));
      Tensor x = random_normal(m, d.k, 1.f, 100 + m, d.act);
      Tensor y(d.out, m, d.n);
      g->run(x, y, with_bias);
      if (m == 0) continue;
      Tensor ref = reference(d, w, b, x, with_bias);
      const double err = rel_l2(y, ref);
      EXPECT_LE(err, bound_for(d));
      EXPECT_TRUE(std::isfinite(err));
    }
  }
}

TEST_P(ImplVsReference, SmallIntegersBitExact) {
  const GemmDesc d = desc();
  Tensor w = random_ints(d.n, d.k, 3, 21, d.weight);
  Tensor b = random_ints(1, d.n, 50, 22, DType::kF32);
  auto g = make(d, w, b);
  GemmDesc rd = d;  // the reference rounds once into the same output dtype
  auto ref = make_reference_gemm(rd, w, b);
  for (bool with_bias : {false, true}) {
    for (std::int64_t m : {1, 3, 7, 16, 1001}) {
      SCOPED_TRACE("M=" + std::to_string(m) + (with_bias ? " with bias" : " without bias"));
      Tensor x = random_ints(m, d.k, 3, 200 + m, d.act);
      Tensor y(d.out, m, d.n), y_ref(d.out, m, d.n);
      g->run(x, y, with_bias);
      ref->run(x, y_ref, with_bias);
      EXPECT_EQ(compare(y, y_ref, 0, 0, impl() + " vs reference"), "");
    }
  }
}

// x, y and the weight are windows into wider buffers (row stride > cols, offset columns); the
// columns outside the y window must stay untouched.
TEST_P(ImplVsReference, StridedViews) {
  const GemmDesc d = desc();
  Tensor wbuf = random_normal(d.n, d.k + 9, 1.f, 31, d.weight);
  const TensorView w = wbuf.view().col_slice(4, d.k);
  Tensor b = random_normal(1, d.n, 1.f, 32, DType::kF32);
  auto g = make(d, w, b);
  for (std::int64_t m : {1, 3, 7, 16, 1001}) {
    SCOPED_TRACE("M=" + std::to_string(m));
    Tensor xbuf = random_normal(m, d.k + 5, 1.f, 300 + m, d.act);
    Tensor ybuf(d.out, m, d.n + 3);
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t c = 0; c < d.n + 3; ++c) set_f32(ybuf, r, c, 77.f);
    const TensorView x = xbuf.view().col_slice(2, d.k);
    const TensorView y = ybuf.view().col_slice(1, d.n);
    g->run(x, y, true);
    Tensor ref = reference(d, w, b, x, true);
    EXPECT_LE(rel_l2(y, ref), bound_for(d));
    bool pad_intact = true;
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t c : {std::int64_t{0}, d.n + 1, d.n + 2})
        pad_intact = pad_intact && get_f32(ybuf, r, c) == 77.f;
    EXPECT_TRUE(pad_intact) << "GEMM wrote outside the y window";
  }
}

// The Gemm keeps its own copy of the weight: the caller's buffer may be overwritten or freed,
// and alternating M (new plans, cached ones) never changes the numbers.
TEST_P(ImplVsReference, WeightCopiedOnceAndReusedAcrossM) {
  const GemmDesc d = desc();
  auto w = std::make_unique<Tensor>(random_normal(d.n, d.k, 1.f, 41, d.weight));
  Tensor w_keep = Tensor::copy_of(*w);
  auto g = make(d, *w, TensorView());
  EXPECT_FALSE(g->has_bias());
  std::memset(w->data(), 0x7f, w->nbytes());  // garbage (large finite values / NaN)
  w.reset();

  Tensor x = random_normal(1001, d.k, 1.f, 42, d.act);
  auto first = [&](std::int64_t m) { return x.view().row_slice(0, m); };
  Tensor y16(d.out, 16, d.n), y1001(d.out, 1001, d.n), y1(d.out, 1, d.n);
  g->run(first(16), y16, false);
  g->run(first(1001), y1001, false);
  g->run(first(1), y1, false);
  Tensor y16_again(d.out, 16, d.n), y1001_again(d.out, 1001, d.n);
  g->run(first(16), y16_again, false);
  g->run(first(1001), y1001_again, false);
  EXPECT_EQ(compare(y16_again, y16, 0, 0, "M=16 repeated"), "");
  EXPECT_EQ(compare(y1001_again, y1001, 0, 0, "M=1001 repeated"), "");
  Tensor ref = reference(d, w_keep, TensorView(), x, false);
  EXPECT_LE(rel_l2(y1001, ref), bound_for(d));
  EXPECT_LE(rel_l2(y16, ref.view().row_slice(0, 16)), bound_for(d));
  EXPECT_LE(rel_l2(y1, ref.view().row_slice(0, 1)), bound_for(d));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ImplVsReference,
    ::testing::Combine(::testing::ValuesIn(impl_pairs()),
                       ::testing::Values(std::int64_t{13}, std::int64_t{129}, std::int64_t{512}),
                       ::testing::Values(std::int64_t{13}, std::int64_t{129}, std::int64_t{512})),
    param_name);

// ---------------------------------------------------------------------------------------------
// int8 x int8 -> int32 (W8A8): every int8 implementation against the reference, bit-exact.

// Uniform over the full int8 range [-128, 127]; the first element is -128 and the last 127, so
// both extremes occur in every tensor of at least two elements.
Tensor random_int8(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  Tensor t(DType::kI8, rows, cols);
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> dist(-128, 127);
  auto* p = t.ptr<std::int8_t>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<std::int8_t>(dist(gen));
  if (t.numel() >= 2) {
    p[0] = -128;
    p[t.numel() - 1] = 127;
  }
  return t;
}

// Empty when the int32 views are equal everywhere; otherwise the count of mismatches and the
// first one.
std::string int32_mismatch(const TensorView& actual, const TensorView& expected) {
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols() ||
      actual.dtype() != DType::kI32 || expected.dtype() != DType::kI32)
    return "shape/dtype: " + actual.describe() + " vs " + expected.describe();
  std::int64_t bad = 0;
  std::string first;
  for (std::int64_t r = 0; r < expected.rows(); ++r) {
    const auto* a = static_cast<const std::int32_t*>(actual.at(r, 0));
    const auto* e = static_cast<const std::int32_t*>(expected.at(r, 0));
    for (std::int64_t c = 0; c < expected.cols(); ++c) {
      if (a[c] == e[c]) continue;
      if (bad++ == 0)
        first = "first at (" + std::to_string(r) + ", " + std::to_string(c) + "): expected " +
                std::to_string(e[c]) + ", got " + std::to_string(a[c]);
    }
  }
  return bad == 0 ? "" : std::to_string(bad) + " mismatches, " + first;
}

const GemmDesc kInt8Desc{0, 0, DType::kI8, DType::kI8, DType::kI32};
GemmDesc int8_desc(std::int64_t k, std::int64_t n) {
  GemmDesc d = kInt8Desc;
  d.k = k;
  d.n = n;
  return d;
}

TEST(ReferenceGemm, Int8HandComputed) {
  const GemmDesc d = int8_desc(3, 2);
  Tensor w(DType::kI8, 2, 3), x(DType::kI8, 2, 3);
  const std::int8_t wv[] = {-128, 127, 1, 2, -3, -128};
  const std::int8_t xv[] = {-128, -128, 5, 127, 0, -1};
  std::memcpy(w.data(), wv, sizeof wv);
  std::memcpy(x.data(), xv, sizeof xv);
  Tensor y(DType::kI32, 2, 2);
  make_reference_gemm(d, w, TensorView())->run(x, y, false);
  const std::int32_t* out = y.ptr<std::int32_t>();
  EXPECT_EQ(out[0], 16384 - 16256 + 5);   // (-128)(-128) + (-128)(127) + 5·1
  EXPECT_EQ(out[1], -256 + 384 - 640);    // (-128)2 + (-128)(-3) + 5(-128)
  EXPECT_EQ(out[2], 127 * -128 + 0 - 1);  // 127(-128) + 0 + (-1)1
  EXPECT_EQ(out[3], 254 + 0 + 128);       // 127·2 + 0 + (-1)(-128)
}

// 2^17 products of (-128)(-128) = 2^14 sum to 2^31, one past INT32_MAX: the reference refuses
// rather than wrapping; one product fewer (2^31 - 2^14) fits.
TEST(ReferenceGemm, Int8OverflowIsDetected) {
  const std::int64_t k = std::int64_t{1} << 17;
  Tensor w(DType::kI8, 1, k), x(DType::kI8, 1, k);
  std::memset(w.data(), 0x80, w.nbytes());  // -128
  std::memset(x.data(), 0x80, x.nbytes());
  Tensor y(DType::kI32, 1, 1);
  auto g = make_reference_gemm(int8_desc(k, 1), w, TensorView());
  EXPECT_THROW(g->run(x, y, false), BackendError);
  EXPECT_NE(message_of([&] { g->run(x, y, false); }).find("int32 overflow"), std::string::npos);
  static_cast<std::int8_t*>(x.data())[k - 1] = 0;
  g->run(x, y, false);
  EXPECT_EQ(y.ptr<std::int32_t>()[0],
            std::numeric_limits<std::int32_t>::max() - 16383);  // 2^31-2^14
}

// The int8 implementations of this build (the reference excluded: it is the oracle).
std::vector<std::string> int8_impls() {
  return testing::listed_impls(int8_desc(1, 1));
}

using Int8Param = std::tuple<std::string, std::int64_t, std::int64_t>;  // impl, k, n

class Int8ImplVsReference : public ::testing::TestWithParam<Int8Param> {
 protected:
  void SetUp() override {
    const std::string why = testing::why_impl_cannot_serve(impl(), desc());
    if (!why.empty()) GTEST_SKIP() << impl() << ": " << why;
  }
  const std::string& impl() const { return std::get<0>(GetParam()); }
  GemmDesc desc() const { return int8_desc(std::get<1>(GetParam()), std::get<2>(GetParam())); }
  std::unique_ptr<Gemm> make(TensorView w) const {
    auto g = testing::make_impl_gemm(impl(), desc(), w, TensorView());
    EXPECT_EQ(g->name(), impl());
    return g;
  }
};

TEST_P(Int8ImplVsReference, FullRangeAllMBitExact) {
  const GemmDesc d = desc();
  Tensor w = random_int8(d.n, d.k, 51);
  auto g = make(w);
  auto ref = make_reference_gemm(d, w, TensorView());
  EXPECT_FALSE(g->has_bias());
  for (std::int64_t m : {0, 1, 2, 3, 7, 16, 1001}) {
    SCOPED_TRACE("M=" + std::to_string(m));
    Tensor x = random_int8(m, d.k, 500 + m);
    Tensor y(DType::kI32, m, d.n), y_ref(DType::kI32, m, d.n);
    g->run(x, y, false);
    ref->run(x, y_ref, false);
    EXPECT_EQ(int32_mismatch(y, y_ref), "");
  }
}

// Every product at its extreme: all -128 x all -128 (largest positive sums) and -128 x 127.
TEST_P(Int8ImplVsReference, ExtremeValuesBitExact) {
  const GemmDesc d = desc();
  Tensor w(DType::kI8, d.n, d.k), x(DType::kI8, 7, d.k), y(DType::kI32, 7, d.n);
  std::memset(w.data(), 0x80, w.nbytes());  // -128
  auto g = make(w);
  for (std::uint8_t fill : {std::uint8_t{0x80}, std::uint8_t{0x7f}}) {
    SCOPED_TRACE("x = " + std::to_string(static_cast<std::int8_t>(fill)));
    std::memset(x.data(), fill, x.nbytes());
    g->run(x, y, false);
    const std::int32_t expected =
        static_cast<std::int32_t>(d.k) * -128 * static_cast<std::int8_t>(fill);
    bool all = true;
    for (std::int64_t i = 0; i < y.numel(); ++i) all = all && y.ptr<std::int32_t>()[i] == expected;
    EXPECT_TRUE(all) << "expected " << expected << ", got e.g. " << y.ptr<std::int32_t>()[0];
  }
}

// x and y are windows into wider buffers; the columns outside the y window stay untouched.
TEST_P(Int8ImplVsReference, StridedViews) {
  const GemmDesc d = desc();
  Tensor w = random_int8(d.n, d.k, 61);
  auto g = make(w);
  auto ref = make_reference_gemm(d, w, TensorView());
  for (std::int64_t m : {1, 7, 16, 1001}) {
    SCOPED_TRACE("M=" + std::to_string(m));
    Tensor xbuf = random_int8(m, d.k + 5, 600 + m);
    Tensor ybuf(DType::kI32, m, d.n + 3);
    auto* yb = ybuf.ptr<std::int32_t>();
    for (std::int64_t i = 0; i < ybuf.numel(); ++i) yb[i] = 0x7eadbeef;
    const TensorView x = xbuf.view().col_slice(2, d.k);
    const TensorView y = ybuf.view().col_slice(1, d.n);
    g->run(x, y, false);
    Tensor y_ref(DType::kI32, m, d.n);
    ref->run(x, y_ref, false);
    EXPECT_EQ(int32_mismatch(y, y_ref), "");
    bool pad_intact = true;
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t c : {std::int64_t{0}, d.n + 1, d.n + 2})
        pad_intact = pad_intact && yb[r * (d.n + 3) + c] == 0x7eadbeef;
    EXPECT_TRUE(pad_intact) << "GEMM wrote outside the y window";
  }
}

// The caller's weight may be freed after creation; alternating M reuses the one packed copy.
TEST_P(Int8ImplVsReference, WeightCopiedOnceAndReusedAcrossM) {
  const GemmDesc d = desc();
  auto w = std::make_unique<Tensor>(random_int8(d.n, d.k, 71));
  auto ref = make_reference_gemm(d, *w, TensorView());
  auto g = make(*w);
  std::memset(w->data(), 0x55, w->nbytes());
  w.reset();
  Tensor x = random_int8(1001, d.k, 72);
  Tensor y_ref(DType::kI32, 1001, d.n);
  ref->run(x, y_ref, false);
  for (std::int64_t m : {16, 1001, 1, 16, 1001}) {
    SCOPED_TRACE("M=" + std::to_string(m));
    Tensor y(DType::kI32, m, d.n);
    g->run(x.view().row_slice(0, m), y, false);
    EXPECT_EQ(int32_mismatch(y, y_ref.view().row_slice(0, m)), "");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Int8ImplVsReference,
    ::testing::Combine(::testing::ValuesIn(int8_impls()),
                       ::testing::Values(std::int64_t{13}, std::int64_t{129}, std::int64_t{512}),
                       ::testing::Values(std::int64_t{13}, std::int64_t{129}, std::int64_t{512})),
    [](const ::testing::TestParamInfo<Int8Param>& info) {
      return std::get<0>(info.param) + "_k" + std::to_string(std::get<1>(info.param)) + "_n" +
             std::to_string(std::get<2>(info.param));
    });

// W8A8's whole range at the longest k the int32 accumulator is specified for: activations
// -128..127 (asymmetric), weights -127..127 (symmetric per channel). Rows 0-3 are the pairs that
// saturate vpmaddubsw's int16 sums when used naively (127 * 127 after the +128 shift, and
// -128 * -127); the rest are uniform. Every int8 implementation that serves must be exact.
class Int8LongK : public ::testing::TestWithParam<std::string> {};

TEST_P(Int8LongK, W8A8RangeAtK16384BitExact) {
  const std::int64_t k = 16384, n = 6, m = 6;
  const GemmDesc d = int8_desc(k, n);
  const std::string why = testing::why_impl_cannot_serve(GetParam(), d);
  if (!why.empty()) GTEST_SKIP() << GetParam() << ": " << why;
  Tensor w(DType::kI8, n, k), x(DType::kI8, m, k);
  std::mt19937_64 gen(81);
  std::uniform_int_distribution<int> wdist(-127, 127), xdist(-128, 127);
  const int w_rows[4] = {127, -127, 127, -127}, x_rows[4] = {127, -128, -128, 127};
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t c = 0; c < k; ++c)
      w.ptr<std::int8_t>()[r * k + c] = static_cast<std::int8_t>(r < 4 ? w_rows[r] : wdist(gen));
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t c = 0; c < k; ++c)
      x.ptr<std::int8_t>()[r * k + c] = static_cast<std::int8_t>(r < 4 ? x_rows[r] : xdist(gen));
  Tensor y(DType::kI32, m, n), y_ref(DType::kI32, m, n);
  testing::make_impl_gemm(GetParam(), d, w, TensorView())->run(x, y, false);
  make_reference_gemm(d, w, TensorView())->run(x, y_ref, false);
  EXPECT_EQ(int32_mismatch(y, y_ref), "");
  // The extreme product sums, by hand: 16384 * 127 * 127 and 16384 * 128 * 127.
  EXPECT_EQ(y_ref.ptr<std::int32_t>()[0 * n + 0], 16384 * 127 * 127);
  EXPECT_EQ(y_ref.ptr<std::int32_t>()[1 * n + 1], 16384 * 128 * 127);
}

// A weight of -128 (outside symmetric quantization, but legal int8) is still exact.
TEST_P(Int8LongK, WeightsOfMinus128AreExact) {
  const GemmDesc d = int8_desc(300, 9);
  const std::string why = testing::why_impl_cannot_serve(GetParam(), d);
  if (!why.empty()) GTEST_SKIP() << GetParam() << ": " << why;
  Tensor w = random_int8(9, 300, 91);
  for (std::int64_t i = 0; i < w.numel(); i += 7) w.ptr<std::int8_t>()[i] = -128;
  Tensor x = random_int8(5, 300, 92);
  for (std::int64_t i = 0; i < x.numel(); i += 3) x.ptr<std::int8_t>()[i] = -128;
  Tensor y(DType::kI32, 5, 9), y_ref(DType::kI32, 5, 9);
  testing::make_impl_gemm(GetParam(), d, w, TensorView())->run(x, y, false);
  make_reference_gemm(d, w, TensorView())->run(x, y_ref, false);
  EXPECT_EQ(int32_mismatch(y, y_ref), "");
}

INSTANTIATE_TEST_SUITE_P(Impls, Int8LongK, ::testing::ValuesIn(int8_impls()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// ---------------------------------------------------------------------------------------------
// Invalid arguments, for every CPU backend of the build.

// "cpu" (the chooser's pick), "onednn" through the registry, or one implementation by name.
class GemmErrors : public ::testing::TestWithParam<std::string> {
 protected:
  std::unique_ptr<Gemm> make(const GemmDesc& desc, TensorView weight, TensorView bias) const {
    if (GetParam() == "cpu") return make_gemm(GemmBackend::kCpu, desc, weight, bias);
    if (GetParam() == "onednn") return make_gemm(GemmBackend::kOneDnn, desc, weight, bias);
    return testing::make_impl_gemm(GetParam(), desc, weight, bias);
  }
  // Skips unless the implementation serves desc's dtypes here.
  bool skip_unless_serves(const GemmDesc& desc) {
    if (GetParam() == "cpu") return false;
    const std::string why = testing::why_impl_cannot_serve(GetParam(), desc);
    if (why.empty()) return false;
    skip_reason_ = why;
    return true;
  }
  std::string skip_reason_;
};

std::vector<std::string> error_test_impls() {
  std::vector<std::string> v{"cpu", "reference"};
  for (const GemmDesc& d : {GemmDesc{1, 1, DType::kF32, DType::kF32, DType::kF32},
                            GemmDesc{1, 1, DType::kI8, DType::kI8, DType::kI32}})
    for (const std::string& impl : testing::listed_impls(d))
      if (std::find(v.begin(), v.end(), impl) == v.end()) v.push_back(impl);
  return v;
}

TEST_P(GemmErrors, CreationRejectsBadWeightAndBias) {
  const GemmDesc d{13, 129, DType::kF32, DType::kF32, DType::kF32};
  if (skip_unless_serves(d)) GTEST_SKIP() << skip_reason_;
  Tensor w(DType::kF32, 129, 13), w_t(DType::kF32, 13, 129), w_bf(DType::kBF16, 129, 13);
  Tensor b_bad(DType::kF32, 1, 128);
  EXPECT_THROW(make(d, w_t, TensorView()), InvalidArgument);
  EXPECT_NE(message_of([&] {
              make(d, w_t, TensorView());
            }).find("weight must be f32[n=129, k=13], got f32[13, 129]"),
            std::string::npos)
      << message_of([&] { make(d, w_t, TensorView()); });
  EXPECT_THROW(make(d, w_bf, TensorView()), InvalidArgument);
  EXPECT_THROW(make(d, w, b_bad), InvalidArgument);
  EXPECT_NE(message_of([&] { make(d, w, b_bad); }).find("got f32[1, 128]"), std::string::npos);
  EXPECT_THROW(make(GemmDesc{0, 129, DType::kF32, DType::kF32, DType::kF32},
                    Tensor(DType::kF32, 129, 0), TensorView()),
               InvalidArgument);
}

// int8 is served only as int8 x int8 -> int32, without bias, by every implementation.
TEST_P(GemmErrors, Int8DtypeCombinations) {
  if (skip_unless_serves(GemmDesc{13, 129, DType::kI8, DType::kI8, DType::kI32}))
    GTEST_SKIP() << skip_reason_;
  Tensor w8(DType::kI8, 129, 13), w32(DType::kF32, 129, 13);
  const auto msg = [&](DType a, DType wt, DType o, const TensorView& w, const TensorView& b) {
    return message_of([&] { make(GemmDesc{13, 129, a, wt, o}, w, b); });
  };
  // int8 activations with f32 weights.
  EXPECT_THROW(make(GemmDesc{13, 129, DType::kI8, DType::kF32, DType::kI32}, w32, TensorView()),
               Unsupported);
  std::string m = msg(DType::kI8, DType::kF32, DType::kI32, w32, TensorView());
  EXPECT_NE(m.find("act=int8 weight=f32 out=int32"), std::string::npos) << m;
  EXPECT_NE(m.find("int8 x int8 -> int32"), std::string::npos) << m;
  // int8 x int8 with a float output.
  EXPECT_THROW(make(GemmDesc{13, 129, DType::kI8, DType::kI8, DType::kF32}, w8, TensorView()),
               Unsupported);
  m = msg(DType::kI8, DType::kI8, DType::kF32, w8, TensorView());
  EXPECT_NE(m.find("act=int8 weight=int8 out=f32"), std::string::npos) << m;
  // Float activations with int8 weights, int32 output from floats, int8 output.
  EXPECT_THROW(make(GemmDesc{13, 129, DType::kF32, DType::kI8, DType::kF32}, w8, TensorView()),
               Unsupported);
  EXPECT_THROW(make(GemmDesc{13, 129, DType::kF32, DType::kF32, DType::kI32}, w32, TensorView()),
               Unsupported);
  EXPECT_THROW(make(GemmDesc{13, 129, DType::kI8, DType::kI8, DType::kI8}, w8, TensorView()),
               Unsupported);
  // A bias is the caller's epilogue's job (quant_bias), whatever its dtype.
  const GemmDesc d{13, 129, DType::kI8, DType::kI8, DType::kI32};
  Tensor b32(DType::kI32, 1, 129), bf(DType::kF32, 1, 129);
  EXPECT_THROW(make(d, w8, b32), InvalidArgument);
  EXPECT_THROW(make(d, w8, bf), InvalidArgument);
  m = msg(d.act, d.weight, d.out, w8, b32);
  EXPECT_NE(m.find("int8 x int8 -> int32 GEMM takes no bias, got int32[1, 129]"), std::string::npos)
      << m;
  // Wrong weight dtype for an int8 desc.
  EXPECT_THROW(make(d, w32, TensorView()), InvalidArgument);
  // run(): wrong x / y dtypes, bias requested.
  auto g = make(d, w8, TensorView());
  Tensor x8(DType::kI8, 7, 13), xf(DType::kF32, 7, 13), y32(DType::kI32, 7, 129),
      yf(DType::kF32, 7, 129);
  EXPECT_THROW(g->run(xf, y32, false), InvalidArgument);
  m = message_of([&] { g->run(xf, y32, false); });
  EXPECT_NE(m.find("x must be int8[M, k=13], got f32[7, 13]"), std::string::npos) << m;
  EXPECT_THROW(g->run(x8, yf, false), InvalidArgument);
  m = message_of([&] { g->run(x8, yf, false); });
  EXPECT_NE(m.find("y must be int32[M=7, n=129], got f32[7, 129]"), std::string::npos) << m;
  EXPECT_THROW(g->run(x8, y32, true), InvalidArgument);
  EXPECT_NO_THROW(g->run(x8, y32, false));
}

TEST_P(GemmErrors, RunRejectsBadShapes) {
  const GemmDesc d{13, 129, DType::kF32, DType::kF32, DType::kF32};
  if (skip_unless_serves(d)) GTEST_SKIP() << skip_reason_;
  Tensor w = random_normal(129, 13, 1.f, 1);
  auto g = make(d, w, TensorView());
  Tensor x(DType::kF32, 7, 13), y(DType::kF32, 7, 129);
  Tensor x_bad(DType::kF32, 7, 12), x_bf(DType::kBF16, 7, 13), y_rows(DType::kF32, 6, 129),
      y_bf(DType::kBF16, 7, 129);
  EXPECT_THROW(g->run(x_bad, y, false), InvalidArgument);
  const std::string msg = message_of([&] { g->run(x_bad, y, false); });
  EXPECT_NE(msg.find("x must be f32[M, k=13], got f32[7, 12]"), std::string::npos) << msg;
  EXPECT_THROW(g->run(x_bf, y, false), InvalidArgument);
  EXPECT_THROW(g->run(x, y_rows, false), InvalidArgument);
  EXPECT_NE(message_of([&] {
              g->run(x, y_rows, false);
            }).find("y must be f32[M=7, n=129], got f32[6, 129]"),
            std::string::npos);
  EXPECT_THROW(g->run(x, y_bf, false), InvalidArgument);
  // No bias was planned.
  EXPECT_THROW(g->run(x, y, true), InvalidArgument);
  EXPECT_NE(message_of([&] { g->run(x, y, true); }).find("no bias was planned"), std::string::npos);
  // In-place (x and y sharing memory) is not allowed.
  Tensor buf(DType::kF32, 7, 129);
  EXPECT_THROW(g->run(buf.view().col_slice(0, 13), buf, false), InvalidArgument);
  // The object is still usable after rejected calls.
  EXPECT_NO_THROW(g->run(x, y, false));
}

INSTANTIATE_TEST_SUITE_P(Backends, GemmErrors, ::testing::ValuesIn(error_test_impls()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// The registry and the build agree on oneDNN; without it, asking for it names what is missing.
TEST(GemmRegistry, OneDnnAvailabilityIsConsistent) {
  const GemmDesc d{13, 129, DType::kF32, DType::kF32, DType::kF32};
  Tensor w = random_normal(129, 13, 1.f, 1);
  EXPECT_EQ(default_cpu_gemm_backend(), GemmBackend::kCpu);
  if (onednn_built()) {
    EXPECT_EQ(make_onednn(d, w, TensorView())->name(), "onednn");
  } else {
    EXPECT_THROW(make_onednn(d, w, TensorView()), Unsupported);
    const std::string m = message_of([&] { make_onednn(d, w, TensorView()); });
    EXPECT_NE(m.find("onednn is not built"), std::string::npos) << m;
  }
}

class OneDnnGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!onednn_built()) GTEST_SKIP() << kNoOneDnn;
  }
};

TEST_F(OneDnnGemm, RejectsUnsupportedDtypePairs) {
  Tensor w32(DType::kF32, 4, 8), wbf(DType::kBF16, 4, 8), w16(DType::kF16, 4, 8);
  const auto unsupported = [](DType a, DType wt, DType o, const TensorView& w) {
    return message_of([&] { make_onednn(GemmDesc{8, 4, a, wt, o}, w, TensorView()); });
  };
  EXPECT_THROW(
      make_onednn(GemmDesc{8, 4, DType::kF16, DType::kF16, DType::kF16}, w16, TensorView()),
      Unsupported);
  EXPECT_THROW(
      make_onednn(GemmDesc{8, 4, DType::kF32, DType::kBF16, DType::kF32}, wbf, TensorView()),
      Unsupported);
  EXPECT_THROW(
      make_onednn(GemmDesc{8, 4, DType::kF32, DType::kF32, DType::kBF16}, w32, TensorView()),
      Unsupported);
  const std::string msg = unsupported(DType::kF32, DType::kBF16, DType::kF32, wbf);
  EXPECT_NE(msg.find("supported: f32 x f32 -> f32, bf16 x bf16 -> bf16 or f32"), std::string::npos)
      << msg;
}

TEST_F(OneDnnGemm, ZeroRowsIsANoOp) {
  const GemmDesc d{13, 129, DType::kBF16, DType::kBF16, DType::kBF16};
  const std::string why = testing::why_impl_cannot_serve("onednn", d);
  if (!why.empty()) GTEST_SKIP() << why;
  Tensor w = random_normal(129, 13, 1.f, 5, DType::kBF16);
  Tensor b = random_normal(1, 129, 1.f, 6, DType::kBF16);
  auto g = make_onednn(d, w, b);
  g->run(TensorView(nullptr, DType::kBF16, 0, 13), TensorView(nullptr, DType::kBF16, 0, 129), true);
  // ...and the first real call afterwards still works.
  Tensor x = random_normal(3, 13, 1.f, 7, DType::kBF16);
  Tensor y(DType::kBF16, 3, 129);
  g->run(x, y, true);
  EXPECT_LE(rel_l2(y, reference(d, w, b, x, true)), 1e-2);
}

}  // namespace
}  // namespace tpl
