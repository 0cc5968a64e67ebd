// oneDNN (2.6) matmul behind the Gemm interface. This is the only file pair that includes
// oneDNN headers; a move to oneDNN 3.x touches only onednn_gemm.cc.
#pragma once

#include <memory>
#include <string>

#include "tpl/cpu_isa.h"
#include "tpl/gemm.h"

namespace tpl {

// f32 x f32 -> f32, bf16 x bf16 -> bf16 or f32 (f32 accumulation), int8 x int8 -> int32 (no
// runtime quantization attributes, so oneDNN 2.6 keeps its VNNI kernel). The weight is reordered
// once into oneDNN's preferred layout and kept; primitives are cached per row count M.
//
// kConv1x1 plans the same product as a 1x1 convolution (f32 only): its blocked weight streams
// 1.3-2.9x faster than the matmul or OpenBLAS at decode M on AVX2, and equals them at M >= 256.
enum class OneDnnOp { kMatmul, kConv1x1 };
std::unique_ptr<Gemm> make_onednn_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                       OneDnnOp op = OneDnnOp::kMatmul);

// Why oneDNN cannot serve `desc` on `cpu`, or "" when it can. Applies cpu.cap to oneDNN first
// (dnnl::set_max_cpu_isa, which oneDNN accepts only before its first kernel). Refuses:
//  * int8 without VNNI in oneDNN's effective ISA: oneDNN 2.6 then multiplies with vpmaddubsw,
//    whose int16 pair sums saturate, and the int32 results are silently wrong;
//  * bf16 below avx512_core (oneDNN 2.6 has no bf16 matmul there);
//  * a cap oneDNN can no longer take (its ISA already fixed above it in this process).
std::string onednn_why_not(const GemmDesc& desc, const CpuInfo& cpu);

// The same for "onednn_conv": f32 only, and the cap.
std::string onednn_conv_why_not(const GemmDesc& desc, const CpuInfo& cpu);

// oneDNN's version and the ISA its kernels use (after applying cpu.cap), e.g.
// "oneDNN 2.6.3 (avx2)".
std::string onednn_description(const CpuInfo& cpu);

}  // namespace tpl
