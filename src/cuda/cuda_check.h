// Internal to the CUDA backend: status checks for CUDA, cuBLASLt and NCCL (each names the failing
// call and the library's error string), and dtype mappings.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include "tpl/error.h"
#include "tpl/tensor.h"

#define TPL_CUDA_CHECK(call)                                                                      \
  do {                                                                                            \
    const cudaError_t tpl_st_ = (call);                                                           \
    if (tpl_st_ != cudaSuccess)                                                                   \
      TPL_THROW(::tpl::BackendError, ::tpl::Where{"cuda"},                                        \
                #call " failed: ", cudaGetErrorName(tpl_st_), ": ", cudaGetErrorString(tpl_st_)); \
  } while (0)

#define TPL_CUBLAS_CHECK(call)                                           \
  do {                                                                   \
    const cublasStatus_t tpl_st_ = (call);                               \
    if (tpl_st_ != CUBLAS_STATUS_SUCCESS)                                \
      TPL_THROW(::tpl::BackendError, ::tpl::Where{"cublaslt"},           \
                #call " failed: ", cublasLtGetStatusName(tpl_st_), ": ", \
                cublasLtGetStatusString(tpl_st_));                       \
  } while (0)

#define TPL_NCCL_CHECK(call, rank)                                \
  do {                                                            \
    const ncclResult_t tpl_st_ = (call);                          \
    if (tpl_st_ != ncclSuccess)                                   \
      TPL_THROW(::tpl::CommError, (::tpl::Where{"nccl", (rank)}), \
                #call " failed: ", ncclGetErrorString(tpl_st_));  \
  } while (0)

namespace tpl::cuda {

inline cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kI8:
      return CUDA_R_8I;
    case DType::kI32:
      return CUDA_R_32I;
  }
  return CUDA_R_32F;
}

inline ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI8:
      return ncclInt8;
    case DType::kI32:
      return ncclInt32;
  }
  return ncclFloat32;
}

}  // namespace tpl::cuda

#include "tpl/cuda.h"

namespace tpl::cuda {
inline cudaStream_t stream_of(const Stream* s) {
  return s ? static_cast<cudaStream_t>(s->handle()) : nullptr;
}
// Kernel element-type code (kernels.h) of a float dtype.
inline int kernel_type(DType t) {
  return t == DType::kBF16 ? 1 : t == DType::kF16 ? 2 : 0;
}
}  // namespace tpl::cuda
