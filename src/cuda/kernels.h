// Launchers for the backend's CUDA kernels (kernels.cu). Plain pointers and ints only, so this
// header is shared by nvcc (C++17) and the C++20 sources. Element type codes: 0 f32, 1 bf16,
// 2 f16. Row strides are in elements.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpl::cuda::kernels {

// q[r, c] = saturate_int8(rint(x[r, c] * inv_scale) + offset)
cudaError_t quantize(const void* x, int x_type, std::int64_t ldx, std::int8_t* q, std::int64_t ldq,
                     std::int64_t rows, std::int64_t cols, float inv_scale, std::int32_t offset,
                     cudaStream_t stream);

// y[r, c] = float(acc[r, c] + (quant_bias ? quant_bias[c] : 0)) * deq_scale[c]
cudaError_t w8a8_dequantize(const std::int32_t* acc, std::int64_t ldacc,
                            const std::int32_t* quant_bias, const float* deq_scale, void* y,
                            int y_type, std::int64_t ldy, std::int64_t rows, std::int64_t cols,
                            cudaStream_t stream);

// y[r, c] = y[r, c] + bias[c] (f32 add, one rounding into y's type)
cudaError_t add_row_bias(void* y, int y_type, std::int64_t ldy, const float* bias,
                         std::int64_t rows, std::int64_t cols, cudaStream_t stream);

// y[r, c] = y[r, c] + float(quant_bias[c]) * deq_scale[c] (f32 multiply, then f32 add)
cudaError_t add_dequantized_bias(void* y, int y_type, std::int64_t ldy,
                                 const std::int32_t* quant_bias, const float* deq_scale,
                                 std::int64_t rows, std::int64_t cols, cudaStream_t stream);

}  // namespace tpl::cuda::kernels
