// oneDNN 2.6 behind tpl::Gemm (see docs/gemm.md). The only file that includes oneDNN. Two
// implementations share this adapter: "onednn" plans a matmul, "onednn_conv" the same product
// as a 1x1 convolution over M positions (x as nwc [1, k, M], W as oiw [n, k, 1]), whose AVX2
// kernel (jit_1x1:avx2) streams a blocked weight much faster at decode M than the matmul's
// gemm:jit or OpenBLAS (docs/gemm.md has the measurements).
//
// Design:
//  * The caller's weight W [n, k] row-major is described to oneDNN as the logical {k, n} matrix
//    with format_tag::ba (no copy), and reordered once, at creation, into the blocked layout a
//    matmul planned with weights format_tag::any picks for a representative M (256). Only that
//    reordered copy is kept.
//  * Primitives are cached per (M, with_bias, x row stride, y row stride). A new M is planned
//    with the weights desc fixed to the held layout, so the weight is never reordered again.
//  * Strided x/y are passed as strided memory descs ({M, k} with strides {stride, 1}). oneDNN
//    2.6's brgemm matmul only takes dense rows, and with strides it falls back to a slow
//    reference kernel (measured 8000x slower), so when the strided plan is a "ref" one, the
//    operand is staged through a dense scratch buffer instead (an M*k / M*n copy).
//  * If no fast implementation takes the held weight layout for some shape, the shape is
//    re-planned with weights `any` and the held copy is reordered, once, into that second
//    layout, which is cached next to the first. Seen for int8 on an AMX CPU: below some M and
//    size the VNNI kernel, whose layout carries the s8s8 compensation, is the fast one.
//  * Every oneDNN call is wrapped: dnnl::error becomes tpl::BackendError naming the call, the
//    shapes and the dtypes.
//  * Int8 (W8A8): s8 x s8 -> s32 with NO primitive attributes and no bias. oneDNN 2.6 drops to
//    the slow gemm:jit kernel as soon as runtime scales / zero points are attached
//    (platform-notes 4.3), so the dequantization epilogue ((acc + quant_bias) * deq_scale) is
//    left to the caller (LocalGemm). Planned this way the brgemm VNNI kernel runs.
#include "gemm/onednn_gemm.h"

#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tpl/error.h"

namespace tpl {
namespace {

using dnnl::memory;
using tag = memory::format_tag;

const Where kWhere{"onednn_gemm"};
constexpr std::int64_t kPlanM = 256;   // representative M for choosing the weight layout
constexpr std::size_t kMaxPlans = 64;  // cached primitives per Gemm (oldest evicted first)

const char* status_name(dnnl_status_t s) {
  switch (s) {
    case dnnl_success:
      return "success";
    case dnnl_out_of_memory:
      return "out_of_memory";
    case dnnl_invalid_arguments:
      return "invalid_arguments";
    case dnnl_unimplemented:
      return "unimplemented";
    case dnnl_iterator_ends:
      return "iterator_ends";
    case dnnl_runtime_error:
      return "runtime_error";
    case dnnl_not_required:
      return "not_required";
  }
  return "unknown";
}

memory::data_type to_dnnl(DType t) {
  switch (t) {
    case DType::kF32:
      return memory::data_type::f32;
    case DType::kBF16:
      return memory::data_type::bf16;
    case DType::kI8:
      return memory::data_type::s8;
    case DType::kI32:
      return memory::data_type::s32;
    default:
      TPL_THROW(Unsupported, kWhere, "dtype ", dtype_name(t), " has no oneDNN path here");
  }
}

class OneDnnGemm final : public Gemm {
 public:
  OneDnnGemm(const GemmDesc& desc, TensorView weight, TensorView bias, OneDnnOp op)
      : desc_(desc), conv_(op == OneDnnOp::kConv1x1) {
    TPL_CHECK(desc.k > 0 && desc.n > 0, kWhere, "k and n must be positive, got k=", desc.k,
              " n=", desc.n);
    const bool f32 =
        desc.act == DType::kF32 && desc.weight == DType::kF32 && desc.out == DType::kF32;
    const bool bf16 = desc.act == DType::kBF16 && desc.weight == DType::kBF16 &&
                      (desc.out == DType::kBF16 || desc.out == DType::kF32);
    const bool int8 =
        desc.act == DType::kI8 && desc.weight == DType::kI8 && desc.out == DType::kI32;
    TPL_CHECK_T(f32 || bf16 || int8, Unsupported, kWhere, "dtypes act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out),
                " (supported: f32 x f32 -> f32, bf16 x bf16 -> bf16 or f32, int8 x int8 -> int32)");
    TPL_CHECK_T(f32 || !conv_, Unsupported, kWhere,
                "onednn_conv serves f32 x f32 -> f32 only, got act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out));
    TPL_CHECK(weight.device() == Device::kHost, kWhere, "weight must be a host tensor");
    TPL_CHECK(weight.rows() == desc.n && weight.cols() == desc.k && weight.dtype() == desc.weight,
              kWhere, "weight must be ", dtype_name(desc.weight), "[n=", desc.n, ", k=", desc.k,
              "], got ", weight.describe());
    if (!bias.empty()) {
      TPL_CHECK(!int8, kWhere, "int8 x int8 -> int32 GEMM takes no bias, got ", bias.describe(),
                " (W8A8's quant_bias is added by the caller's epilogue)");
      TPL_CHECK(bias.device() == Device::kHost, kWhere, "bias must be a host tensor");
      TPL_CHECK(bias.rows() == 1 && bias.cols() == desc.n &&
                    (bias.dtype() == DType::kF32 || bias.dtype() == DType::kBF16 ||
                     bias.dtype() == DType::kF16),
                kWhere, "bias must be a float [1, n=", desc.n, "], got ", bias.describe());
    }
    act_dt_ = to_dnnl(desc.act);
    wei_dt_ = to_dnnl(desc.weight);
    out_dt_ = to_dnnl(desc.out);

    guarded("engine/stream creation", -1, [&] {
      engine_ = dnnl::engine(dnnl::engine::kind::cpu, 0);
      stream_ = dnnl::stream(engine_);
    });

    // Bias is kept as f32 {1, n} (exact for any 16-bit float input): oneDNN accepts it for
    // every supported dst dtype, and a bf16 output is then rounded once, after the add.
    if (!bias.empty()) {
      guarded("bias memory", -1, [&] {
        bias_md_ = conv_ ? memory::desc({desc.n}, memory::data_type::f32, tag::a)
                         : memory::desc({1, desc.n}, memory::data_type::f32, tag::ab);
        bias_mem_ = memory(bias_md_, engine_);
        auto* dst = static_cast<float*>(bias_mem_.get_data_handle());
        for (std::int64_t j = 0; j < desc.n; ++j) dst[j] = get_f32(bias, 0, j);
      });
      has_bias_ = true;
    }

    // Plan at a representative M with weights `any`, then reorder the caller's weight once.
    guarded("weight reorder", kPlanM, [&] {
      const auto pd = make_pd(kPlanM, desc.k, desc.n, any_weights_md(), has_bias_);
      const memory::desc user_md =
          conv_ ? memory::desc({desc.n, desc.k, 1}, wei_dt_, {weight.stride(), 1, 1})
                : memory::desc({desc.k, desc.n}, wei_dt_, {1, weight.stride()});
      memory user(user_md, engine_, weight.data());
      memory held(pd.weights_desc(), engine_);
      dnnl::reorder(user, held).execute(stream_, user, held);
      stream_.wait();
      weights_.emplace_back(pd.weights_desc(), held);
    });
  }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return conv_ ? "onednn_conv" : "onednn"; }
  bool has_bias() const override { return has_bias_; }

  void run(TensorView x, TensorView y, bool with_bias) override {
    const std::int64_t k = desc_.k, n = desc_.n;
    check_gemm_run(*this, x, y, with_bias, Device::kHost, "onednn_gemm");
    const std::int64_t m = x.rows();
    if (m == 0) return;

    // A single row is dense whatever its stride; normalising it avoids needless staging.
    const std::int64_t xs = m == 1 ? k : x.stride(), ys = m == 1 ? n : y.stride();
    Plan& plan = get_plan(Key{m, with_bias, xs, ys});
    const TensorView x_dense = plan.stage_x ? scratch(scratch_x_, desc_.act, m, k) : x;
    const TensorView y_dense = plan.stage_y ? scratch(scratch_y_, desc_.out, m, n) : y;
    if (plan.stage_x) copy_into(x, x_dense);
    guarded(conv_ ? "convolution execute" : "matmul execute", m, [&] {
      plan.src.set_data_handle(x_dense.data());
      plan.dst.set_data_handle(y_dense.data());
      std::unordered_map<int, memory> args{
          {DNNL_ARG_SRC, plan.src}, {DNNL_ARG_WEIGHTS, plan.weights}, {DNNL_ARG_DST, plan.dst}};
      if (with_bias) args.emplace(DNNL_ARG_BIAS, bias_mem_);
      plan.prim.execute(stream_, args);
      stream_.wait();
    });
    if (plan.stage_y) copy_into(y_dense, y);
  }

 private:
  struct Key {
    std::int64_t m;
    bool bias;
    std::int64_t x_stride, y_stride;
    auto tie() const { return std::tie(m, bias, x_stride, y_stride); }
    bool operator<(const Key& o) const { return tie() < o.tie(); }
  };
  struct Plan {
    dnnl::primitive prim;
    memory src, dst, weights;
    bool stage_x = false, stage_y = false;  // run through dense scratch rows
  };

  // Runs f, turning a dnnl::error into a BackendError that names the call, shapes and dtypes.
  template <typename F>
  void guarded(const char* call, std::int64_t m, F&& f) {
    try {
      f();
    } catch (const dnnl::error& e) {
      TPL_THROW(BackendError, kWhere, "oneDNN ", call, " failed (", status_name(e.status), ": ",
                e.what(), ") for ", context(m));
    }
  }

  std::string context(std::int64_t m) const {
    std::ostringstream os;
    os << "x " << dtype_name(desc_.act) << "[" << (m < 0 ? std::string("M") : std::to_string(m))
       << ", " << desc_.k << "] * W " << dtype_name(desc_.weight) << "[" << desc_.n << ", "
       << desc_.k << "]^T -> y " << dtype_name(desc_.out) << (has_bias_ ? " (bias f32)" : "");
    return os.str();
  }

  memory::desc any_weights_md() const {
    return conv_ ? memory::desc({desc_.n, desc_.k, 1}, wei_dt_, tag::any)
                 : memory::desc({desc_.k, desc_.n}, wei_dt_, tag::any);
  }

  dnnl::primitive_desc make_pd(std::int64_t m, std::int64_t x_stride, std::int64_t y_stride,
                               const memory::desc& wei_md, bool bias) const {
    if (conv_) {
      // Row i of x is position i of a 1-D image with k channels: nwc with row strides.
      const memory::desc src_md({1, desc_.k, m}, act_dt_, {m * x_stride, 1, x_stride});
      const memory::desc dst_md({1, desc_.n, m}, out_dt_, {m * y_stride, 1, y_stride});
      const auto fwd = dnnl::prop_kind::forward_inference;
      const auto algo = dnnl::algorithm::convolution_direct;
      const memory::dims one{1}, zero{0};
      const auto d = bias ? dnnl::convolution_forward::desc(fwd, algo, src_md, wei_md, bias_md_,
                                                            dst_md, one, zero, zero)
                          : dnnl::convolution_forward::desc(fwd, algo, src_md, wei_md, dst_md, one,
                                                            zero, zero);
      return dnnl::convolution_forward::primitive_desc(d, engine_);
    }
    const memory::desc src_md({m, desc_.k}, act_dt_, {x_stride, 1});
    const memory::desc dst_md({m, desc_.n}, out_dt_, {y_stride, 1});
    const auto d = bias ? dnnl::matmul::desc(src_md, wei_md, bias_md_, dst_md)
                        : dnnl::matmul::desc(src_md, wei_md, dst_md);
    return dnnl::matmul::primitive_desc(d, engine_);
  }

  // The held weight in layout `md`, reordering the primary copy into it the first time.
  memory weights_in(const memory::desc& md) {
    for (const auto& [held_md, mem] : weights_)
      if (held_md == md) return mem;
    memory mem(md, engine_);
    memory held = weights_.front().second;  // a handle: execute() takes non-const
    try {
      dnnl::reorder(held, mem).execute(stream_, held, mem);
    } catch (const dnnl::error& e) {
      if (e.status != dnnl_unimplemented) throw;
      // oneDNN 2.6 has no reorder between two blocked s8 layouts where the target carries the
      // s8s8 compensation (AMX's layout -> the VNNI kernel's, which small M takes on an AMX
      // CPU); through the plain layout it has both. A byte copy each way, so exact.
      memory plain(plain_weights_md(), engine_);
      dnnl::reorder(held, plain).execute(stream_, held, plain);
      dnnl::reorder(plain, mem).execute(stream_, plain, mem);
    }
    stream_.wait();
    weights_.emplace_back(md, mem);
    return mem;
  }

  // The caller's logical weight layout, dense: W [n, k] row-major.
  memory::desc plain_weights_md() const {
    return conv_ ? memory::desc({desc_.n, desc_.k, 1}, wei_dt_, tag::oiw)
                 : memory::desc({desc_.k, desc_.n}, wei_dt_, tag::ba);
  }

  // Dense [rows, cols] window of a scratch tensor, grown (never shrunk) on demand.
  static TensorView scratch(Tensor& t, DType dtype, std::int64_t rows, std::int64_t cols) {
    if (t.rows() < rows) t = Tensor(dtype, rows, cols);
    return t.view().row_slice(0, rows);
  }

  // The primitive descriptor, or nothing when no implementation (not even ref) takes the descs.
  std::optional<dnnl::primitive_desc> try_pd(std::int64_t m, std::int64_t x_stride,
                                             std::int64_t y_stride, const memory::desc& wei_md,
                                             bool bias) const {
    try {
      return make_pd(m, x_stride, y_stride, wei_md, bias);
    } catch (const dnnl::error& e) {
      if (e.status != dnnl_unimplemented) throw;
      return std::nullopt;
    }
  }

  static bool is_fast(const std::optional<dnnl::primitive_desc>& pd) {
    return pd && std::string(pd->impl_info_str()).rfind("ref", 0) != 0;
  }

  Plan& get_plan(const Key& key) {
    if (auto it = plans_.find(key); it != plans_.end()) return it->second;
    const std::int64_t k = desc_.k, n = desc_.n;
    const memory::desc& held = weights_.front().first;
    Plan plan;
    guarded(conv_ ? "convolution primitive creation" : "matmul primitive creation", key.m, [&] {
      // 1. The caller's strides with the held weight layout.
      auto pd = try_pd(key.m, key.x_stride, key.y_stride, held, key.bias);
      // 2. Dense (staged) activations with the held layout.
      if (!is_fast(pd) && (key.x_stride != k || key.y_stride != n)) {
        pd = try_pd(key.m, k, n, held, key.bias);
        plan.stage_x = key.x_stride != k;
        plan.stage_y = key.y_stride != n;
      }
      // 3. Let oneDNN pick the weight layout too; the held copy is reordered into it once.
      if (!is_fast(pd)) {
        auto any_pd = try_pd(key.m, k, n, any_weights_md(), key.bias);
        if (is_fast(any_pd) || !pd) pd = any_pd;
      }
      if (!pd) {
        TPL_THROW(BackendError, kWhere, "oneDNN has no ", conv_ ? "convolution" : "matmul",
                  " implementation for ", context(key.m));
      }
      plan.weights = weights_in(pd->weights_desc());
      plan.prim = dnnl::primitive(*pd);
      plan.src = memory(pd->src_desc(), engine_, DNNL_MEMORY_NONE);
      plan.dst = memory(pd->dst_desc(), engine_, DNNL_MEMORY_NONE);
    });
    if (plans_.size() >= kMaxPlans) {
      plans_.erase(order_.front());
      order_.pop_front();
    }
    order_.push_back(key);
    return plans_.emplace(key, std::move(plan)).first->second;
  }

  GemmDesc desc_;
  bool conv_ = false;  // planned as a 1x1 convolution ("onednn_conv") rather than a matmul
  memory::data_type act_dt_{}, wei_dt_{}, out_dt_{};
  dnnl::engine engine_;
  dnnl::stream stream_;
  bool has_bias_ = false;
  memory::desc bias_md_;
  memory bias_mem_;
  // Reordered weight copies: front() is the layout chosen at creation; more only on fallback.
  std::vector<std::pair<memory::desc, memory>> weights_;
  std::map<Key, Plan> plans_;
  std::deque<Key> order_;  // insertion order, for eviction
  Tensor scratch_x_, scratch_y_;
};

const char* isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41:
      return "sse41";
    case dnnl_cpu_isa_avx:
      return "avx";
    case dnnl_cpu_isa_avx2:
      return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
      return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core:
      return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "other";
  }
}

dnnl_cpu_isa_t to_dnnl_isa(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kSse41:
      return dnnl_cpu_isa_sse41;
    case CpuIsa::kAvx2:
      return dnnl_cpu_isa_avx2;
    case CpuIsa::kAvx512Core:
      return dnnl_cpu_isa_avx512_core;
    case CpuIsa::kAvx512CoreVnni:
      return dnnl_cpu_isa_avx512_core_vnni;
    case CpuIsa::kAvx512CoreBf16:
      return dnnl_cpu_isa_avx512_core_bf16;
    case CpuIsa::kAvx512CoreAmx:
      return dnnl_cpu_isa_avx512_core_amx;
  }
  return dnnl_cpu_isa_all;
}

// oneDNN's ISA values are cumulative bit masks: a includes b when every bit of b is set in a.
bool includes(dnnl_cpu_isa_t a, dnnl_cpu_isa_t b) {
  return (static_cast<unsigned>(a) & static_cast<unsigned>(b)) == static_cast<unsigned>(b);
}

// Applies cpu.cap to oneDNN; "" when oneDNN's ISA is within it.
std::string apply_isa_cap(const CpuInfo& cpu) {
  if (!cpu.cap) return "";
  const dnnl_cpu_isa_t want = to_dnnl_isa(*cpu.cap);
  // Fails once oneDNN has fixed its ISA (first kernel or query, or an earlier cap); the check
  // below tells whether the ISA it fixed is within the cap.
  dnnl_set_max_cpu_isa(want);
  const dnnl_cpu_isa_t eff = dnnl_get_effective_cpu_isa();
  if (includes(want, eff)) return "";
  return std::string("oneDNN's ISA is already fixed at ") + isa_name(eff) +
         " in this process, above the cap " + cpu_isa_name(*cpu.cap) +
         " (oneDNN takes a cap only before its first kernel)";
}

}  // namespace

std::string onednn_why_not(const GemmDesc& desc, const CpuInfo& cpu) {
  if (std::string issue = apply_isa_cap(cpu); !issue.empty()) return issue;
  const dnnl_cpu_isa_t eff = dnnl_get_effective_cpu_isa();
  // Only dtype combinations the matmul takes get an ISA verdict; others fail at creation with
  // the list of what is supported.
  const bool int8 = desc.act == DType::kI8 && desc.weight == DType::kI8 && desc.out == DType::kI32;
  const bool bf16 = desc.act == DType::kBF16 && desc.weight == DType::kBF16 &&
                    (desc.out == DType::kBF16 || desc.out == DType::kF32);
  if (int8 && !includes(eff, dnnl_cpu_isa_avx512_core_vnni) &&
      !includes(eff, dnnl_cpu_isa_avx2_vnni))
    return std::string("no VNNI in oneDNN's ISA (") + isa_name(eff) +
           "): oneDNN 2.6 multiplies s8 x s8 with vpmaddubsw, whose int16 pair sums saturate, "
           "so int32 results would be silently wrong";
  if (bf16 && !includes(eff, dnnl_cpu_isa_avx512_core))
    return std::string("oneDNN 2.6 has no bf16 matmul below avx512_core (its ISA here: ") +
           isa_name(eff) + ")";
  return "";
}

std::string onednn_description(const CpuInfo& cpu) {
  apply_isa_cap(cpu);
  const dnnl_version_t* v = dnnl_version();
  std::ostringstream os;
  os << "oneDNN " << v->major << "." << v->minor << "." << v->patch << " ("
     << isa_name(dnnl_get_effective_cpu_isa()) << ")";
  return os.str();
}

std::string onednn_conv_why_not(const GemmDesc& desc, const CpuInfo& cpu) {
  if (std::string issue = apply_isa_cap(cpu); !issue.empty()) return issue;
  // Below AVX2 oneDNN 2.6 plans the 1x1 convolution as jit_1x1:sse41, which takes nwc
  // activations and then segfaults in its JIT code (k = n = 512, M = 1; found on an emulated
  // Nehalem, reproduced natively with TPL_CPU_ISA=sse41). Its point was jit_1x1:avx2's speed.
  if (cpu.effective() < CpuIsa::kAvx2)
    return std::string(
               "needs AVX2: below it oneDNN 2.6's 1x1 convolution (jit_1x1:sse41) "
               "crashes on this layout (ISA here: ") +
           cpu_isa_name(cpu.effective()) + ")";
  const bool f32 = desc.act == DType::kF32 && desc.weight == DType::kF32 && desc.out == DType::kF32;
  return f32 ? "" : "serves f32 only (bf16 and int8 run on oneDNN's matmul)";
}

std::unique_ptr<Gemm> make_onednn_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                       OneDnnOp op) {
  return std::make_unique<OneDnnGemm>(desc, weight, bias, op);
}

}  // namespace tpl
