// The only file that knows which backends were compiled in (#if on the generated config).
#include "tpl/backends.h"
#include "tpl/build_config.h"
#include "tpl/error.h"
#if TPL_WITH_MPI
#include "comm/mpi_communicator.h"
#endif
#if TPL_WITH_ONEDNN
#include "gemm/onednn_gemm.h"
#endif
#if TPL_WITH_CUDA
#include "tpl/cuda.h"
#endif

namespace tpl {

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::kReference:
      return "reference";
    case GemmBackend::kOneDnn:
      return "onednn";
    case GemmBackend::kCublasLt:
      return "cublaslt";
  }
  return "?";
}

GemmBackend parse_gemm_backend(const std::string& s) {
  for (GemmBackend b : {GemmBackend::kReference, GemmBackend::kOneDnn, GemmBackend::kCublasLt})
    if (s == gemm_backend_name(b)) return b;
  TPL_THROW(InvalidArgument, Where{"parse_gemm_backend"}, "unknown GEMM backend '", s,
            "' (expected reference, onednn or cublaslt)");
}

std::vector<GemmBackend> available_gemm_backends() {
  std::vector<GemmBackend> v{GemmBackend::kReference};
#if TPL_WITH_ONEDNN
  v.push_back(GemmBackend::kOneDnn);
#endif
#if TPL_WITH_CUDA
  v.push_back(GemmBackend::kCublasLt);
#endif
  return v;
}

GemmBackend default_cpu_gemm_backend() {
#if TPL_WITH_ONEDNN
  return GemmBackend::kOneDnn;
#else
  return GemmBackend::kReference;
#endif
}

std::unique_ptr<Gemm> make_gemm(GemmBackend backend, const GemmDesc& desc, TensorView weight,
                                TensorView bias, Runtime* rt) {
  switch (backend) {
    case GemmBackend::kReference:
      return make_reference_gemm(desc, weight, bias);
    case GemmBackend::kOneDnn:
#if TPL_WITH_ONEDNN
      return make_onednn_gemm(desc, weight, bias);
#else
      TPL_THROW(Unsupported, Where{"make_gemm"},
                "GEMM backend onednn is not built (this build has no oneDNN; configure with "
                "TPL_ONEDNN=ON where oneDNN is installed, or use the reference backend)");
#endif
    case GemmBackend::kCublasLt:
#if TPL_WITH_CUDA
      // Runs on device tensors (x, y on Device::kCuda); weight and bias are copied to the GPU.
      return cuda::make_cublaslt_gemm(desc, weight, bias,
                                      rt ? &cuda::as_cuda(*rt).stream() : nullptr);
#else
      break;
#endif
  }
  TPL_THROW(Unsupported, Where{"make_gemm"}, "GEMM backend ", gemm_backend_name(backend),
            " is not built (this build has no CUDA backend)");
}

std::unique_ptr<Runtime> make_runtime(Device device) {
  switch (device) {
    case Device::kHost:
      return make_host_runtime();
    case Device::kCuda:
#if TPL_WITH_CUDA
      return cuda::make_cuda_runtime();
#else
      break;
#endif
  }
  TPL_THROW(Unsupported, Where{"make_runtime"},
            "the CUDA runtime is not built (this build has no CUDA backend)");
}

std::unique_ptr<Communicator> make_device_communicator(Communicator& bootstrap, Runtime& rt) {
  if (rt.device() == Device::kHost) return bootstrap.split(0, bootstrap.rank());
#if TPL_WITH_CUDA
  return cuda::make_nccl_communicator(bootstrap, rt);
#else
  TPL_THROW(Unsupported, Where{"make_device_communicator"},
            "NCCL is not built (this build has no CUDA backend)");
#endif
}

std::vector<std::string> built_backends() {
  std::vector<std::string> v{"local"};
#if TPL_WITH_MPI
  v.push_back("mpi");
#endif
  v.push_back("reference");
#if TPL_WITH_ONEDNN
  v.push_back("onednn");
#endif
#if TPL_WITH_CUDA
  v.push_back("cuda");
#endif
  return v;
}

}  // namespace tpl
