// One op scenario against the single-device reference y = x·Wᵀ + b (seed-spec §15 items 1-5),
// shared by the op test matrix (ops_test.cc) and the randomized stress run (tests/stress/).
//
// A Case is a config, a layer, a token count per DP replica, data and bias choices. run_case
// builds the layer on every rank of `world`, gives each rank its own input slice of the global
// problem according to the op's entry placement, and compares its output with the slice of the
// reference its exit placement names:
//   * small integers in f32 and bf16: every product and sum is exact, so outputs must be
//     bit-identical to the reference;
//   * random normal bf16: partial sums are rounded to bf16 before the f32-staged reduction, so
//     the bound is |err| <= 0.03 + 0.02·|expected| (outputs have unit scale);
//   * W8A8: against the exact integer reference, with the bounds documented in run_case.
#pragma once

#include <cstdint>
#include <string>

#include "tpl/backends.h"
#include "tpl/linear.h"
#include "tpl/quant.h"

namespace tpl::testing {

enum class Data { kIntF32, kIntBF16, kNormalBF16 };
enum class BiasMode { kNone, kAdded, kSkipped };

const char* data_name(Data d);
const char* bias_name(BiasMode b);
DType dtype_of(Data d);
Tensor make_data(Data d, std::int64_t rows, std::int64_t cols, std::uint64_t seed, float scale);
// Reference on the exact values of the inputs (bf16 inputs are exact in f32), output in f32.
Tensor reference(TensorView x, TensorView w, TensorView b);

struct Case {
  std::string label;
  Config config;
  ModelInfo model;
  LayerSpec spec;
  OpKind expect_kind;
  std::int64_t tokens = 1;  // replica d has tokens + d*token_skew tokens
  std::int64_t token_skew = 0;
  Data data = Data::kIntF32;
  BiasMode bias = BiasMode::kNone;
  bool w8a8 = false;  // W8A8 layer built from the float weights; reference = exact integer math
};

// "label W=.. dp=.. tp=.. tokens=..+..*d data bias [w8a8]"
std::string describe(const Case& c);

// Runs one case on every rank of `world` (collective); returns this rank's failure message,
// "" if its output matches. Exceptions propagate.
std::string run_case(Communicator& world, Case c);

Config tp_config(int tp);
LayerSpec column(const std::string& prefix, std::int64_t in, std::int64_t out);
LayerSpec row(const std::string& prefix, std::int64_t in, std::int64_t out);

inline constexpr const char* kQkv = "model.layers.0.self_attn.qkv_proj";
inline constexpr const char* kO = "model.layers.0.self_attn.o_proj";
inline constexpr const char* kGateUp = "model.layers.0.mlp.gate_up_proj";
inline constexpr const char* kDown = "model.layers.0.mlp.down_proj";

}  // namespace tpl::testing
