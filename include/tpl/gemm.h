// GEMM: y = x · Wᵀ (+ bias), with W stored [out, in] as in PyTorch's Linear.
//
// A Gemm is planned once for one weight (shapes, dtypes, optional bias) and run many times with
// any number of rows M. Implementations may keep a private, re-laid-out copy of the weight
// (oneDNN reorders it once into its preferred blocked layout); the caller's weight view need not
// outlive the Gemm. run() is not thread-safe on one object.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "tpl/tensor.h"

namespace tpl {

struct GemmDesc {
  std::int64_t k = 0;          // in features
  std::int64_t n = 0;          // out features
  DType act = DType::kF32;     // x
  DType weight = DType::kF32;  // W
  DType out = DType::kF32;     // y
  // f32 x f32 -> f32; bf16 x bf16 -> bf16 or f32 (f32 accumulation); int8 x int8 -> int32
  // (exact integer accumulation, no bias: W8A8 dequantizes in LocalGemm).
};

class Gemm {
 public:
  virtual ~Gemm() = default;
  virtual const GemmDesc& desc() const = 0;
  virtual std::string name() const = 0;  // "reference", "onednn", "cublaslt"
  virtual bool has_bias() const = 0;
  // x: [M, k] of desc().act; y: [M, n] of desc().out; row strides may exceed the width.
  // with_bias adds the bias planned at creation (InvalidArgument if there is none).
  virtual void run(TensorView x, TensorView y, bool with_bias) = 0;
};

// The argument checks every Gemm::run performs: x [M, k] of desc.act and y [M, n] of desc.out on
// `device`, a planned bias when with_bias, and no overlap of x and y (host views). Throws
// InvalidArgument naming `where`.
void check_gemm_run(const Gemm& g, const TensorView& x, const TensorView& y, bool with_bias,
                    Device device, const char* where);

// Naive triple loop accumulating in double: the test oracle. Inputs of any float dtype.
std::unique_ptr<Gemm> make_reference_gemm(const GemmDesc& desc, TensorView weight, TensorView bias);

}  // namespace tpl
