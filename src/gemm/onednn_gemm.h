// oneDNN (2.6) matmul behind the Gemm interface. This is the only file pair that includes
// oneDNN headers; a move to oneDNN 3.x touches only onednn_gemm.cc.
#pragma once

#include <memory>

#include "tpl/gemm.h"

namespace tpl {

// f32 x f32 -> f32, bf16 x bf16 -> bf16 or f32 (f32 accumulation), int8 x int8 -> int32 (no
// runtime quantization attributes, so oneDNN 2.6 keeps its VNNI kernel). The weight is reordered
// once into oneDNN's preferred layout and kept; primitives are cached per row count M.
std::unique_ptr<Gemm> make_onednn_gemm(const GemmDesc& desc, TensorView weight, TensorView bias);

}  // namespace tpl
