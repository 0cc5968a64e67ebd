// cuBLASLt GEMM: y = x · Wᵀ (+ bias) on device tensors.
//
// Layout mapping. cuBLASLt is column-major; a row-major [R, C] matrix with row stride ld is the
// same memory as a column-major [C, R] matrix with leading dimension ld. So the row-major
//   Y[M, n] = X[M, k] · W[n, k]ᵀ
// is computed as the column-major product
//   Yᵀ (n × M, ld = y.stride) = op(A) · op(B),  A = W seen as k × n (ld = k), op(A) = Aᵀ;
//                                               B = Xᵀ seen as k × M (ld = x.stride), op(B) = B,
// i.e. transa = T, transb = N ("TN"), m = n, n = M, k = k: the layout cuBLASLt's int8 tensor-core
// kernels require. The bias (one value per output feature = per row of D) is the
// CUBLASLT_EPILOGUE_BIAS vector, in the output dtype.
//
// Types: f32 (CUBLAS_COMPUTE_32F, which never uses TF32), bf16/f16 in with bf16/f16/f32 out
// (CUBLAS_COMPUTE_32F, f32 scale), int8 in, int32 out (CUBLAS_COMPUTE_32I, int32 scale, no bias).
// The algorithm is chosen by the heuristic once per (M, strides, alignment, bias) and cached with
// its layouts; the workspace (32 MiB) is allocated once per Gemm.
#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include "cuda_check.h"

namespace tpl::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

bool valid_types(const GemmDesc& d) {
  if (d.act != d.weight) return false;
  switch (d.act) {
    case DType::kF32:
      return d.out == DType::kF32;
    case DType::kBF16:
    case DType::kF16:
      return d.out == d.act || d.out == DType::kF32;
    case DType::kI8:
      return d.out == DType::kI32;
    default:
      return false;
  }
}

// Largest power of two <= 256 dividing the address.
std::uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

template <typename T>
void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
  TPL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, a, &v, sizeof(v)));
}

class CublasLtGemm final : public Gemm {
 public:
  CublasLtGemm(const GemmDesc& desc, TensorView weight, TensorView bias, const Stream* stream)
      : desc_(desc), stream_(stream_of(stream)) {
    const Where w{"cublaslt gemm"};
    TPL_CHECK(desc.k > 0 && desc.n > 0, w, "k and n must be positive, got k=", desc.k,
              " n=", desc.n);
    TPL_CHECK_T(valid_types(desc), Unsupported, w, "unsupported types ", desc.act, " x ",
                desc.weight, " -> ", desc.out);
    TPL_CHECK(weight.dtype() == desc.weight && weight.rows() == desc.n && weight.cols() == desc.k,
              w, "weight must be ", desc.weight, "[", desc.n, ", ", desc.k, "], got ",
              weight.describe());
    // Device weights and biases may still be being written on the runtime's stream (a
    // layer-sharded window's broadcast, an upload): let that work finish before the blocking
    // copies below, which run on the legacy stream and do not wait for a non-blocking stream.
    if (stream_) TPL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    weight_ = DeviceTensor(desc.weight, desc.n, desc.k);
    copy(weight, weight_.view());
    if (!bias.empty()) {
      TPL_CHECK(desc.act != DType::kI8, w, "int8 x int8 -> int32 GEMM takes no bias, got ",
                bias.describe(), " (W8A8's quant_bias is added by the dequantization epilogue)");
      TPL_CHECK(bias.rows() == 1 && bias.cols() == desc.n, w, "bias must be [1, ", desc.n,
                "], got ", bias.describe());
      // The epilogue takes the bias in D's type: convert on the host if needed.
      Tensor host = bias.device() == Device::kHost ? Tensor::copy_of(bias) : to_host(bias);
      if (host.dtype() != desc.out) {
        Tensor conv(desc.out, 1, desc.n);
        convert_into(host, conv);
        host = std::move(conv);
      }
      bias_ = to_device(host);
    }
    workspace_ = DeviceTensor(DType::kI8, 1, static_cast<std::int64_t>(kWorkspaceBytes));
    try {
      create_descriptors();
    } catch (...) {
      destroy();
      throw;
    }
  }

  ~CublasLtGemm() override { destroy(); }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "cublaslt"; }
  bool has_bias() const override { return bias_.data() != nullptr; }

  void run(TensorView x, TensorView y, bool with_bias) override {
    check_gemm_run(*this, x, y, with_bias, Device::kCuda, "cublaslt gemm");
    const std::int64_t m = x.rows();
    if (m == 0) return;
    const int b = with_bias ? 1 : 0;
    const Key key{m, x.stride(), y.stride(), std::min(alignment(x.data()), alignment(y.data())), b};
    const Plan& plan = plan_for(key);
    const float one_f = 1.f, zero_f = 0.f;
    const std::int32_t one_i = 1, zero_i = 0;
    const bool i8 = desc_.act == DType::kI8;
    const void* alpha = i8 ? static_cast<const void*>(&one_i) : &one_f;
    const void* beta = i8 ? static_cast<const void*>(&zero_i) : &zero_f;
    TPL_CUBLAS_CHECK(cublasLtMatmul(handle_, op_[b], alpha, weight_.data(), a_layout_, x.data(),
                                    plan.b, beta, y.data(), plan.d, y.data(), plan.d, &plan.algo,
                                    workspace_.data(), kWorkspaceBytes, stream_));
  }

 private:
  void create_descriptors() {
    TPL_CUBLAS_CHECK(cublasLtCreate(&handle_));
    const bool i8 = desc_.act == DType::kI8;
    const cublasComputeType_t compute = i8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
    const cudaDataType_t scale = i8 ? CUDA_R_32I : CUDA_R_32F;
    for (int b = 0; b < 2; ++b) {
      TPL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_[b], compute, scale));
      set_attr(op_[b], CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
      set_attr(op_[b], CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
      if (b == 1 && bias_.data()) {
        set_attr(op_[b], CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
        set_attr(op_[b], CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_.data());
      }
    }
    TPL_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&a_layout_, cuda_type(desc_.weight), desc_.k, desc_.n, desc_.k));
  }

  // Destroy functions only fail on invalid handles; their status is ignored here.
  void destroy() {
    for (auto& [key, plan] : plans_) {
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.d);
    }
    plans_.clear();
    if (a_layout_) cublasLtMatrixLayoutDestroy(a_layout_);
    for (auto*& d : op_)
      if (d) cublasLtMatmulDescDestroy(std::exchange(d, nullptr));
    if (handle_) cublasLtDestroy(handle_);
    a_layout_ = nullptr;
    handle_ = nullptr;
  }

  // M, ldx, ldy, min alignment of x and y, bias epilogue.
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, std::uint32_t, int>;
  struct Plan {
    cublasLtMatrixLayout_t b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };

  const Plan& plan_for(const Key& key) {
    if (auto it = plans_.find(key); it != plans_.end()) return it->second;
    const auto [m, ldx, ldy, align, b] = key;
    Plan plan;
    TPL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, cuda_type(desc_.act), desc_.k, m, ldx));
    TPL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.d, cuda_type(desc_.out), desc_.n, m, ldy));
    Plan& stored = plans_.emplace(key, plan).first->second;  // destroyed with the Gemm from here on
    cublasLtMatmulPreference_t pref = nullptr;
    TPL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    struct PrefGuard {
      cublasLtMatmulPreference_t p;
      ~PrefGuard() { cublasLtMatmulPreferenceDestroy(p); }
    } guard{pref};
    const std::uint64_t ws = kWorkspaceBytes;
    const std::uint32_t a_align = alignment(weight_.data());
    TPL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    TPL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_align, sizeof(a_align)));
    for (auto attr :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
      TPL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &align, sizeof(align)));
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    TPL_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op_[b], a_layout_, stored.b, stored.d,
                                                    stored.d, pref, 1, &result, &returned));
    if (returned == 0) {
      cublasLtMatrixLayoutDestroy(stored.b);
      cublasLtMatrixLayoutDestroy(stored.d);
      plans_.erase(key);
      TPL_THROW(Unsupported, Where{"cublaslt gemm"}, "no cuBLASLt algorithm for ", desc_.act, " x ",
                desc_.weight, " -> ", desc_.out, " M=", m, " k=", desc_.k, " n=", desc_.n,
                " ldx=", ldx, " ldy=", ldy, " alignment ", align, " bytes", b ? " with bias" : "",
                desc_.act == DType::kI8 ? " (int8 needs k, n and strides multiples of 4)" : "");
    }
    stored.algo = result.algo;
    return stored;
  }

  GemmDesc desc_;
  cudaStream_t stream_;
  DeviceTensor weight_, bias_;
  cublasLtHandle_t handle_ = nullptr;
  DeviceTensor workspace_;
  cublasLtMatmulDesc_t op_[2] = {nullptr, nullptr};  // without / with the bias epilogue
  cublasLtMatrixLayout_t a_layout_ = nullptr;
  std::map<Key, Plan> plans_;
};

}  // namespace

std::unique_ptr<Gemm> make_cublaslt_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                         const Stream* stream) {
  return std::make_unique<CublasLtGemm>(desc, weight, bias, stream);
}

}  // namespace tpl::cuda
