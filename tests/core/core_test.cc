// Placement and sharding arithmetic, dtype conversions, tensor views, and the weight sharding of
// LinearLayer::output_rows (seed-spec §10).
#include <gtest/gtest.h>

#include "expect_throw.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "tpl/dtype.h"
#include "tpl/error.h"
#include "tpl/linear.h"
#include "tpl/placement.h"
#include "tpl/tensor.h"

namespace tpl {
namespace {

using tpl::testing::expect_throw_with;

float bits_to_f32(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- shard_range ---------------------------------------------------------------------------

TEST(ShardRangeTest, Examples) {
  EXPECT_EQ(shard_range(10, 3, 0), (ShardRange{0, 4}));
  EXPECT_EQ(shard_range(10, 3, 1), (ShardRange{4, 3}));
  EXPECT_EQ(shard_range(10, 3, 2), (ShardRange{7, 3}));
  EXPECT_EQ(shard_range(12, 4, 3), (ShardRange{9, 3}));
  EXPECT_EQ(shard_range(7, 1, 0), (ShardRange{0, 7}));
  // total < parts: the first `total` members get one element, the rest none.
  EXPECT_EQ(shard_range(2, 4, 0), (ShardRange{0, 1}));
  EXPECT_EQ(shard_range(2, 4, 1), (ShardRange{1, 1}));
  EXPECT_EQ(shard_range(2, 4, 2), (ShardRange{2, 0}));
  EXPECT_EQ(shard_range(2, 4, 3), (ShardRange{2, 0}));
  EXPECT_EQ(shard_range(0, 3, 2), (ShardRange{0, 0}));
}

TEST(ShardRangeTest, UnevenRuleProperties) {
  for (std::int64_t total = 0; total <= 40; ++total)
    for (int parts = 1; parts <= 9; ++parts) {
      std::int64_t next = 0;
      for (int i = 0; i < parts; ++i) {
        const ShardRange r = shard_range(total, parts, i);
        EXPECT_EQ(r.offset, next) << total << "/" << parts << " #" << i;  // contiguous
        EXPECT_EQ(r.size, total / parts + (i < total % parts ? 1 : 0))
            << total << "/" << parts << " #" << i;
        next = r.offset + r.size;
      }
      EXPECT_EQ(next, total) << total << "/" << parts;  // covers exactly
    }
}

TEST(ShardRangeTest, Errors) {
  EXPECT_THROW(shard_range(10, 0, 0), InvalidArgument);
  EXPECT_THROW(shard_range(10, 3, -1), InvalidArgument);
  EXPECT_THROW(shard_range(10, 3, 3), InvalidArgument);
  EXPECT_THROW(shard_range(-1, 3, 0), InvalidArgument);
}

TEST(ShardRangeTest, Units) {
  // 10 heads of 128 over 4 ranks: 3, 3, 2, 2 heads.
  EXPECT_EQ(shard_range_units(10, 128, 4, 0), (ShardRange{0, 384}));
  EXPECT_EQ(shard_range_units(10, 128, 4, 1), (ShardRange{384, 384}));
  EXPECT_EQ(shard_range_units(10, 128, 4, 2), (ShardRange{768, 256}));
  EXPECT_EQ(shard_range_units(10, 128, 4, 3), (ShardRange{1024, 256}));
  EXPECT_THROW(shard_range_units(10, 128, 4, 4), InvalidArgument);
}

TEST(PadTest, PadToMultipleAndCeilDiv) {
  EXPECT_EQ(pad_to_multiple(5, 4), 3);
  EXPECT_EQ(pad_to_multiple(8, 4), 0);
  EXPECT_EQ(pad_to_multiple(0, 4), 0);
  EXPECT_EQ(pad_to_multiple(1001, 4), 3);
  EXPECT_EQ(pad_to_multiple(7, 1), 0);
  EXPECT_EQ(pad_to_multiple(9, 16), 7);
  EXPECT_EQ(ceil_div(9, 4), 3);
  EXPECT_EQ(ceil_div(8, 4), 2);
  EXPECT_EQ(ceil_div(0, 4), 0);
  EXPECT_EQ(ceil_div(1, 1), 1);
  for (std::int64_t n = 0; n < 50; ++n)
    for (std::int64_t m = 1; m < 9; ++m) {
      EXPECT_EQ((n + pad_to_multiple(n, m)) % m, 0);
      EXPECT_LT(pad_to_multiple(n, m), m);
      EXPECT_EQ(ceil_div(n, m) * m, n + pad_to_multiple(n, m));
    }
}

// ---- Placement -----------------------------------------------------------------------------

TEST(PlacementTest, ToStringAndEquality) {
  EXPECT_EQ(Placement::replicated().to_string(), "Replicated");
  EXPECT_EQ(Placement::partial().to_string(), "Partial");
  EXPECT_EQ(Placement::shard_tokens().to_string(), "Shard(tokens)");
  EXPECT_EQ(Placement::shard_features().to_string(), "Shard(features)");
  EXPECT_EQ(Placement::shard(0), Placement::shard_tokens());
  EXPECT_EQ(Placement::shard(1), Placement::shard_features());
  EXPECT_FALSE(Placement::shard_tokens() == Placement::shard_features());
  EXPECT_FALSE(Placement::replicated() == Placement::partial());
  EXPECT_EQ(Placement{}, Placement::replicated());
}

// ---- dtypes --------------------------------------------------------------------------------

TEST(DTypeTest, SizesNamesParse) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kI8), 1u);
  EXPECT_EQ(dtype_size(DType::kI32), 4u);
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kI32})
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::kBF16);
  EXPECT_EQ(parse_dtype("float16"), DType::kF16);
  EXPECT_EQ(parse_dtype("float32"), DType::kF32);
  expect_throw_with<InvalidArgument>([] { parse_dtype("fp8"); }, "unknown dtype 'fp8'");
}

TEST(Bf16Test, RoundToNearestEven) {
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing in [1, 2)
  // Exactly half an ulp above 1 (mantissa even) -> 1.
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  // 1.5 ulp above 1: tie between 1+ulp (odd) and 1+2ulp (even) -> rounds up to 1+2ulp.
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + 2 * ulp);
  // Just above the half: rounds up; just below: rounds down.
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 1.0f + ulp);
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8) - std::ldexp(1.0f, -20)), 1.0f);
  // Negative ties mirror positive ones.
  EXPECT_EQ(round_to_bf16(-1.0f - std::ldexp(1.0f, -8)), -1.0f);
  EXPECT_EQ(round_to_bf16(-1.0f - 3 * std::ldexp(1.0f, -8)), -1.0f - 2 * ulp);
  // Exact values pass through.
  for (float v : {0.0f, 1.0f, -2.0f, 0.5f, 3.0f, 1.0f + ulp, 65536.0f, -0.15625f})
    EXPECT_EQ(round_to_bf16(v), v) << v;
  EXPECT_EQ(f32_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16_bits(-2.0f), 0xc000);
}

TEST(Bf16Test, SpecialValues) {
  // -0 keeps its sign.
  EXPECT_EQ(f32_to_bf16_bits(-0.0f), 0x8000);
  EXPECT_TRUE(std::signbit(round_to_bf16(-0.0f)));
  EXPECT_EQ(f32_to_bf16_bits(0.0f), 0x0000);
  // NaN stays NaN, including NaNs whose payload lives only in the low 16 bits (which plain
  // truncation or rounding would turn into infinity).
  EXPECT_TRUE(std::isnan(round_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(round_to_bf16(bits_to_f32(0x7f800001u))));
  EXPECT_TRUE(std::isnan(round_to_bf16(bits_to_f32(0xff800001u))));
  EXPECT_TRUE(std::isnan(round_to_bf16(bits_to_f32(0x7fffffffu))));
  // Infinities are kept; the largest finite f32 rounds to infinity.
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(f32_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
  // Subnormals round like any other value.
  EXPECT_EQ(f32_to_bf16_bits(bits_to_f32(0x00008000u)), 0x0000);  // tie, even -> 0
  EXPECT_EQ(f32_to_bf16_bits(bits_to_f32(0x00018000u)), 0x0002);  // tie, odd -> up
  EXPECT_EQ(bf16_bits_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_bits_to_f32(0xbfc0), -1.5f);
}

TEST(F16Test, Conversions) {
  EXPECT_EQ(f32_to_f16_bits(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16_bits(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16_bits(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16_bits(65520.0f), 0x7c00);  // halfway to the next binade: rounds to inf
  EXPECT_EQ(f32_to_f16_bits(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16_bits(std::ldexp(1.0f, -26)), 0x0000);  // below half of it
  // Ties to even: 1 + 2^-11 is half an ulp -> 1; 1 + 3*2^-11 -> 1 + 2^-9.
  EXPECT_EQ(f32_to_f16_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(f32_to_f16_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_TRUE(std::isnan(f16_bits_to_f32(f32_to_f16_bits(std::nanf("")))));
  EXPECT_EQ(f16_bits_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_bits_to_f32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_bits_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::signbit(f16_bits_to_f32(0x8000)));
}

TEST(DTypeTest, BulkConversions) {
  const std::vector<float> src = {1.0f, -0.5f, 3.0f + std::ldexp(1.0f, -9), 1e-3f, -0.0f, 100.0f};
  for (DType t : {DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(dtype_name(t));
    std::vector<std::uint16_t> bits(src.size());
    convert_from_f32(src.data(), bits.data(), t, src.size());
    std::vector<float> back(src.size());
    convert_to_f32(bits.data(), t, back.data(), src.size());
    for (std::size_t i = 0; i < src.size(); ++i) {
      const std::uint16_t b =
          t == DType::kBF16 ? f32_to_bf16_bits(src[i]) : f32_to_f16_bits(src[i]);
      EXPECT_EQ(bits[i], b) << i;
      EXPECT_EQ(back[i], t == DType::kBF16 ? bf16_bits_to_f32(b) : f16_bits_to_f32(b)) << i;
    }
  }
  std::vector<float> f(src.size());
  convert_from_f32(src.data(), f.data(), DType::kF32, src.size());
  EXPECT_EQ(f, src);
  std::int8_t i8[2];
  EXPECT_THROW(convert_from_f32(src.data(), i8, DType::kI8, 2), InvalidArgument);
  EXPECT_THROW(convert_to_f32(i8, DType::kI8, f.data(), 2), InvalidArgument);
}

// ---- tensors -------------------------------------------------------------------------------

Tensor iota(std::int64_t rows, std::int64_t cols, DType dtype = DType::kF32) {
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from_f32(v, rows, cols, dtype);
}

TEST(TensorViewTest, SlicesAndBounds) {
  const Tensor t = iota(4, 6);
  const TensorView v = t.view();
  EXPECT_TRUE(v.contiguous());
  EXPECT_EQ(v.describe(), "f32[4, 6]");

  const TensorView rows = v.row_slice(1, 2);
  EXPECT_EQ(rows.rows(), 2);
  EXPECT_EQ(get_f32(rows, 0, 0), 6.0f);
  EXPECT_TRUE(rows.contiguous());

  const TensorView cols = v.col_slice(2, 3);
  EXPECT_EQ(cols.cols(), 3);
  EXPECT_EQ(cols.stride(), 6);
  EXPECT_FALSE(cols.contiguous());
  EXPECT_EQ(get_f32(cols, 1, 0), 8.0f);
  EXPECT_EQ(get_f32(cols, 3, 2), 22.0f);
  EXPECT_TRUE(cols.row_slice(2, 1).contiguous());  // one row is contiguous

  EXPECT_EQ(v.row_slice(4, 0).rows(), 0);  // empty slice at the end is fine
  EXPECT_EQ(v.col_slice(6, 0).cols(), 0);

  EXPECT_THROW(v.row_slice(3, 2), InvalidArgument);
  EXPECT_THROW(v.row_slice(-1, 1), InvalidArgument);
  EXPECT_THROW(v.row_slice(0, -1), InvalidArgument);
  EXPECT_THROW(v.col_slice(5, 2), InvalidArgument);
  EXPECT_THROW(v.col_slice(-1, 2), InvalidArgument);
  EXPECT_THROW(cols.col_slice(1, 3), InvalidArgument);
  expect_throw_with<InvalidArgument>([&] { v.row_slice(2, 5); }, "out of f32[4, 6]");
}

TEST(TensorViewTest, Reshape) {
  const Tensor t = iota(4, 6);
  const TensorView r = t.view().reshape(3, 8);
  EXPECT_EQ(r.rows(), 3);
  EXPECT_EQ(r.cols(), 8);
  EXPECT_EQ(get_f32(r, 2, 7), 23.0f);
  EXPECT_EQ(t.view().reshape(24, 1).rows(), 24);
  expect_throw_with<InvalidArgument>([&] { t.view().reshape(5, 5); }, "reshape");
  expect_throw_with<InvalidArgument>([&] { t.view().col_slice(0, 3).reshape(3, 4); }, "contiguous");
  // A contiguous row block can be reshaped.
  EXPECT_EQ(get_f32(t.view().row_slice(2, 2).reshape(1, 12), 0, 0), 12.0f);
}

TEST(TensorViewTest, ConstructorChecks) {
  float buf[8] = {};
  EXPECT_THROW(TensorView(buf, DType::kF32, 2, 4, 3), InvalidArgument);  // stride < cols
  EXPECT_THROW(TensorView(buf, DType::kF32, -1, 4), InvalidArgument);
  EXPECT_THROW(TensorView(nullptr, DType::kF32, 2, 2), InvalidArgument);
  EXPECT_NO_THROW(TensorView(nullptr, DType::kF32, 0, 4));
  const TensorView v(buf, DType::kF32, 2, 3, 4);
  EXPECT_EQ(v.stride(), 4);
  EXPECT_EQ(v.numel(), 6);
  EXPECT_EQ(v.nbytes(), 24u);
}

TEST(TensorTest, CopyIntoStridedViews) {
  const Tensor src = iota(4, 6);
  Tensor dst(DType::kF32, 4, 5);
  // Columns 2..4 of src into columns 1..3 of dst: both strided.
  copy_into(src.view().col_slice(2, 3), dst.view().col_slice(1, 3));
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 5; ++c) {
      const float expect = (c >= 1 && c <= 3) ? static_cast<float>(r * 6 + c + 1) : 0.0f;
      EXPECT_EQ(get_f32(dst.view(), r, c), expect) << r << "," << c;
    }
  // Strided -> contiguous and contiguous -> strided.
  const Tensor packed = Tensor::copy_of(src.view().col_slice(1, 2));
  EXPECT_TRUE(packed.view().contiguous());
  EXPECT_EQ(to_f32_vector(packed), (std::vector<float>{1, 2, 7, 8, 13, 14, 19, 20}));
  Tensor wide(DType::kF32, 4, 6);
  copy_into(packed, wide.view().col_slice(4, 2));
  EXPECT_EQ(get_f32(wide.view(), 3, 5), 20.0f);
  EXPECT_EQ(get_f32(wide.view(), 3, 3), 0.0f);

  // Shape and dtype must match.
  EXPECT_THROW(copy_into(src.view().col_slice(0, 2), dst.view().col_slice(0, 3)), InvalidArgument);
  const Tensor b = iota(4, 6, DType::kBF16);
  EXPECT_THROW(copy_into(b, src.view()), InvalidArgument);
  // 16-bit types copy bit patterns.
  Tensor b2(DType::kBF16, 4, 3);
  copy_into(b.view().col_slice(3, 3), b2);
  EXPECT_EQ(get_f32(b2.view(), 2, 0), 15.0f);
}

TEST(TensorTest, FromF32RoundsAndConvertInto) {
  const Tensor b = Tensor::from_f32({1.0f + std::ldexp(1.0f, -8), 2.5f}, 1, 2, DType::kBF16);
  EXPECT_EQ(get_f32(b, 0, 0), 1.0f);
  EXPECT_EQ(get_f32(b, 0, 1), 2.5f);
  Tensor f(DType::kF32, 1, 2);
  convert_into(b, f);
  EXPECT_EQ(to_f32_vector(f), (std::vector<float>{1.0f, 2.5f}));
  EXPECT_THROW(Tensor::from_f32({1.0f}, 1, 2), InvalidArgument);
}

// ---- LinearLayer::output_rows --------------------------------------------------------------

LayerSpec column(std::int64_t out) {
  LayerSpec s;
  s.prefix = "model.layers.0.mlp.x";
  s.kind = LayerKind::kColumn;
  s.in_features = 8;
  s.out_features = out;
  return s;
}

LayerSpec qkv(std::int64_t heads, std::int64_t kv_heads, std::int64_t hd) {
  LayerSpec s;
  s.prefix = "model.layers.0.self_attn.qkv_proj";
  s.kind = LayerKind::kQkv;
  s.in_features = 16;
  s.qkv = {heads, kv_heads, hd};
  return s;
}

using Rows = std::vector<ShardRange>;

TEST(OutputRowsTest, ColumnUneven) {
  const LayerSpec s = column(10);
  EXPECT_EQ(LinearLayer::output_rows(s, 0, 3), (Rows{{0, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 1, 3), (Rows{{4, 3}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 2, 3), (Rows{{7, 3}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 0, 1), (Rows{{0, 10}}));
}

TEST(OutputRowsTest, MergedColumnSplitsEachHalf) {
  LayerSpec s;
  s.prefix = "model.layers.0.mlp.gate_up_proj";
  s.kind = LayerKind::kMergedColumn;
  s.in_features = 8;
  s.output_sizes = {11, 11};
  EXPECT_EQ(LinearLayer::output_rows(s, 0, 3), (Rows{{0, 4}, {11, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 1, 3), (Rows{{4, 4}, {15, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 2, 3), (Rows{{8, 3}, {19, 3}}));
  // Unequal logical sizes.
  s.output_sizes = {4, 6};
  EXPECT_EQ(LinearLayer::output_rows(s, 1, 2), (Rows{{2, 2}, {7, 3}}));
  // Every full row is held by exactly one rank.
  s.output_sizes = {11, 11};
  std::vector<int> held(22, 0);
  for (int r = 0; r < 3; ++r)
    for (const ShardRange& sr : LinearLayer::output_rows(s, r, 3))
      for (std::int64_t i = sr.offset; i < sr.offset + sr.size; ++i) ++held[i];
  for (int i = 0; i < 22; ++i) EXPECT_EQ(held[i], 1) << i;
}

TEST(OutputRowsTest, QkvGqaReplicatedKv) {
  // 8 heads, 2 KV heads, head_dim 4, tp = 4: two query heads per rank; KV heads replicated,
  // rank r holds KV head r / 2. Layout: q [0, 32), k [32, 40), v [40, 48).
  const LayerSpec s = qkv(8, 2, 4);
  for (int r = 0; r < 4; ++r) {
    const std::int64_t kv = r / 2;
    EXPECT_EQ(LinearLayer::output_rows(s, r, 4),
              (Rows{{r * 8, 8}, {32 + kv * 4, 4}, {40 + kv * 4, 4}}))
        << "rank " << r;
  }
}

TEST(OutputRowsTest, QkvKvSplit) {
  // tp = 2: 4 query heads and 1 KV head per rank.
  const LayerSpec s = qkv(8, 2, 4);
  EXPECT_EQ(LinearLayer::output_rows(s, 0, 2), (Rows{{0, 16}, {32, 4}, {40, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(s, 1, 2), (Rows{{16, 16}, {36, 4}, {44, 4}}));
  // tp = 1: everything.
  EXPECT_EQ(LinearLayer::output_rows(s, 0, 1), (Rows{{0, 32}, {32, 8}, {40, 8}}));
  // tp = 8 with 8 KV heads (MHA): one of each per rank.
  const LayerSpec mha = qkv(8, 8, 2);
  EXPECT_EQ(LinearLayer::output_rows(mha, 5, 8), (Rows{{10, 2}, {26, 2}, {42, 2}}));
}

TEST(OutputRowsTest, QkvUnevenGqaSplits) {
  // 4 heads / 2 KV heads over 3 ranks (TP does not divide the KV heads): query heads 0-1, 2, 3;
  // rank 0 reads KV head 0, ranks 1 and 2 share KV head 1. Layout: q [0, 16), k [16, 24).
  const LayerSpec a = qkv(4, 2, 4);
  EXPECT_EQ(LinearLayer::output_rows(a, 0, 3), (Rows{{0, 8}, {16, 4}, {24, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(a, 1, 3), (Rows{{8, 4}, {20, 4}, {28, 4}}));
  EXPECT_EQ(LinearLayer::output_rows(a, 2, 3), (Rows{{12, 4}, {20, 4}, {28, 4}}));
  // 8 heads / 4 KV heads over 3 ranks (query groups straddle ranks): query heads 0-2, 3-5,
  // 6-7; rank 1 reads KV heads 1 and 2, so KV head 1 lives on ranks 0 and 1.
  const LayerSpec b = qkv(8, 4, 4);
  EXPECT_EQ(LinearLayer::output_rows(b, 0, 3), (Rows{{0, 12}, {32, 8}, {48, 8}}));
  EXPECT_EQ(LinearLayer::output_rows(b, 1, 3), (Rows{{12, 12}, {36, 8}, {52, 8}}));
  EXPECT_EQ(LinearLayer::output_rows(b, 2, 3), (Rows{{24, 8}, {44, 4}, {60, 4}}));
  // 5 heads / 1 KV head over 4 ranks (TP divides neither): every rank holds the one KV head.
  const LayerSpec c = qkv(5, 1, 2);
  EXPECT_EQ(LinearLayer::output_rows(c, 0, 4), (Rows{{0, 4}, {10, 2}, {12, 2}}));
  EXPECT_EQ(LinearLayer::output_rows(c, 3, 4), (Rows{{8, 2}, {10, 2}, {12, 2}}));
  // Every query head is held exactly once and finds its KV head locally, at every TP size.
  for (const auto& [heads, kv] : {std::pair{8, 2}, {8, 4}, {6, 3}, {5, 1}, {12, 4}})
    for (int tp = 1; tp <= heads; ++tp) {
      std::vector<int> held(static_cast<std::size_t>(heads), 0);
      for (int r = 0; r < tp; ++r) {
        const Rows rows = LinearLayer::output_rows(qkv(heads, kv, 2), r, tp);
        const std::int64_t kv0 = (rows[1].offset - heads * 2) / 2, kvn = rows[1].size / 2;
        for (std::int64_t h = rows[0].offset / 2; h < (rows[0].offset + rows[0].size) / 2; ++h) {
          ++held[static_cast<std::size_t>(h)];
          const std::int64_t need = h / (heads / kv);
          EXPECT_TRUE(need >= kv0 && need < kv0 + kvn)
              << heads << "/" << kv << " heads at TP " << tp << ": rank " << r << "'s query head "
              << h << " needs KV head " << need << ", holds [" << kv0 << ", " << kv0 + kvn << ")";
        }
      }
      for (int h = 0; h < heads; ++h)
        EXPECT_EQ(held[static_cast<std::size_t>(h)], 1)
            << heads << "/" << kv << " at TP " << tp << ": query head " << h;
    }
}

TEST(OutputRowsTest, QkvBadSplits) {
  // More ranks than query heads: some rank would hold none.
  expect_throw_with<InvalidArgument>([] { LinearLayer::output_rows(qkv(4, 2, 4), 0, 5); },
                                     "4 query heads cannot be split over 5 ranks");
  expect_throw_with<InvalidArgument>([] { LinearLayer::output_rows(qkv(6, 4, 4), 0, 2); },
                                     "multiple of num_kv_heads");
}

TEST(OutputRowsTest, RowAndReplicatedKeepAllOutputs) {
  LayerSpec s = column(12);
  s.kind = LayerKind::kRow;
  EXPECT_EQ(LinearLayer::output_rows(s, 2, 4), (Rows{{0, 12}}));
  s.kind = LayerKind::kReplicated;
  EXPECT_EQ(LinearLayer::output_rows(s, 3, 4), (Rows{{0, 12}}));
}

}  // namespace
}  // namespace tpl
