// The only file that knows which backends were compiled in (#if on the generated config).
#include <algorithm>

#include "gemm/avx2_int8_gemm.h"
#include "gemm/cpu_gemm_impls.h"
#include "tpl/backends.h"
#include "tpl/build_config.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/shm.h"
#if TPL_WITH_MPI
#include "comm/mpi_communicator.h"
#endif
#if TPL_WITH_ONEDNN
#include "gemm/onednn_gemm.h"
#endif
#if TPL_WITH_OPENBLAS
#include "gemm/openblas_gemm.h"
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
    case GemmBackend::kCpu:
      return "cpu";
    case GemmBackend::kCublasLt:
      return "cublaslt";
  }
  return "?";
}

GemmBackend parse_gemm_backend(const std::string& s) {
  for (GemmBackend b :
       {GemmBackend::kCpu, GemmBackend::kReference, GemmBackend::kOneDnn, GemmBackend::kCublasLt})
    if (s == gemm_backend_name(b)) return b;
  TPL_THROW(InvalidArgument, Where{"parse_gemm_backend"}, "unknown GEMM backend '", s,
            "' (expected cpu, reference, onednn or cublaslt)");
}

std::vector<GemmBackend> available_gemm_backends() {
  std::vector<GemmBackend> v{GemmBackend::kCpu, GemmBackend::kReference};
#if TPL_WITH_ONEDNN
  v.push_back(GemmBackend::kOneDnn);
#endif
#if TPL_WITH_CUDA
  v.push_back(GemmBackend::kCublasLt);
#endif
  return v;
}

GemmBackend default_cpu_gemm_backend() {
  return GemmBackend::kCpu;
}

double reference_gemm_held_bytes(const GemmDesc& d) {
  // Transposed, widened: int32 for int8, double for floats (src/gemm/reference_gemm.cc).
  return d.weight == DType::kI8 ? 4.0 : 8.0;
}

std::vector<CpuGemmImpl> built_cpu_gemm_impls(int threads) {
  std::vector<CpuGemmImpl> v;
  [[maybe_unused]] const auto held_in_weight_dtype = [](const GemmDesc& d) {
    return double(dtype_size(d.weight));  // reordered once into oneDNN's blocked layout
  };
  const auto same = [](const GemmDesc& d, DType t) {
    return d.act == t && d.weight == t && d.out == t;
  };
#if TPL_WITH_ONEDNN
  v.push_back({"onednn",
               [](const GemmDesc& d, const CpuInfo& cpu) { return onednn_why_not(d, cpu); },
               [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                 return make_onednn_gemm(d, w, b);
               },
               held_in_weight_dtype});
  v.push_back({"onednn_conv",
               [](const GemmDesc& d, const CpuInfo& cpu) { return onednn_conv_why_not(d, cpu); },
               [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                 return make_onednn_gemm(d, w, b, OneDnnOp::kConv1x1);
               },
               held_in_weight_dtype});
#endif
#if TPL_WITH_OPENBLAS
  v.push_back({"openblas",
               [same](const GemmDesc& d, const CpuInfo&) -> std::string {
                 return same(d, DType::kF32) ? "" : "OpenBLAS serves f32 only";
               },
               [threads](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                 return make_openblas_gemm(d, w, b, threads);
               },
               [](const GemmDesc&) { return 4.0; }});  // the f32 weight, transposed
#endif
  v.push_back({"bf16_via_f32",
               [](const GemmDesc& d, const CpuInfo&) -> std::string {
                 const bool ok = d.act == DType::kBF16 && d.weight == DType::kBF16 &&
                                 (d.out == DType::kBF16 || d.out == DType::kF32);
                 return ok ? "" : "serves bf16 x bf16 only";
               },
               [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory& f32) {
                 return make_bf16_via_f32_gemm(d, w, b, f32);
               },
               [](const GemmDesc&) { return 4.0; }});  // the inner f32 GEMM's copy
  v.push_back({"avx2_int8",
               [](const GemmDesc& d, const CpuInfo& cpu) -> std::string {
                 if (d.act != DType::kI8 || d.weight != DType::kI8 || d.out != DType::kI32)
                   return "serves int8 x int8 -> int32 only";
                 if (!cpu.has(CpuIsa::kAvx2))
                   return std::string("needs AVX2 (ISA here: ") + cpu_isa_name(cpu.effective()) +
                          ")";
                 return "";
               },
               [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                 return make_avx2_int8_gemm(d, w, b);
               },
               [](const GemmDesc&) { return 1.0; }});  // packed int8 tiles
  v.push_back({"reference", [](const GemmDesc&, const CpuInfo&) { return std::string(); },
               [](const GemmDesc& d, TensorView w, TensorView b, const GemmFactory&) {
                 return make_reference_gemm(d, w, b);
               },
               reference_gemm_held_bytes});
  return v;
}

std::vector<std::string> cpu_gemm_libraries(const CpuInfo& cpu) {
  std::vector<std::string> v;
#if TPL_WITH_ONEDNN
  v.push_back(onednn_description(cpu));
#endif
#if TPL_WITH_OPENBLAS
  v.push_back(openblas_description());
#endif
  return v;
}

std::unique_ptr<Gemm> make_gemm(GemmBackend backend, const GemmDesc& desc, TensorView weight,
                                TensorView bias, Runtime* rt, CpuGemmChooser* chooser) {
  switch (backend) {
    case GemmBackend::kCpu: {
      if (chooser) return chooser->make(desc, weight, bias);
      return make_default_cpu_gemm_chooser()->make(desc, weight, bias);
    }
    case GemmBackend::kReference:
      return make_reference_gemm(desc, weight, bias);
    case GemmBackend::kOneDnn:
#if TPL_WITH_ONEDNN
    {
      const std::string why_not = onednn_why_not(desc, detect_cpu());
      TPL_CHECK_T(why_not.empty(), Unsupported, Where{"make_gemm"}, "oneDNN cannot serve ",
                  dtype_name(desc.act), " x ", dtype_name(desc.weight), " -> ",
                  dtype_name(desc.out), " here: ", why_not);
      return make_onednn_gemm(desc, weight, bias);
    }
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

#if !TPL_WITH_MPI
// The SHM communicator is built on MPI-3 windows (src/comm/shm_communicator.cc).
std::unique_ptr<Communicator> make_shm_communicator(Communicator& group, const ShmOptions&) {
  TPL_THROW(Unsupported, (Where{"shm", group.rank()}),
            "the SHM communicator needs MPI, which this build does not have");
}
#endif

std::string mpi_library_version() {
#if TPL_WITH_MPI
  char buf[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  if (MPI_Get_library_version(buf, &len) != MPI_SUCCESS) return "unknown";
  std::string v(buf, static_cast<std::size_t>(len));
  v.erase(std::find(v.begin(), v.end(), '\0'), v.end());  // some MPIs count the terminator
  if (const auto nl = v.find_first_of("\r\n"); nl != std::string::npos) v.resize(nl);
  return v;
#else
  return "not built";
#endif
}

std::vector<std::string> built_backends() {
  std::vector<std::string> v{"local"};
#if TPL_WITH_MPI
  v.push_back("mpi");
  v.push_back("shm");
#endif
  v.push_back("reference");
  v.push_back("avx2_int8");
  v.push_back("bf16_via_f32");
#if TPL_WITH_ONEDNN
  v.push_back("onednn");
  v.push_back("onednn_conv");
#endif
#if TPL_WITH_OPENBLAS
  v.push_back("openblas");
#endif
#if TPL_WITH_CUDA
  v.push_back("cuda");
#endif
  return v;
}

}  // namespace tpl
