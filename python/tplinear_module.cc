// tplinear's Python module (docs/python.md): World over mpi4py, Config, Env, LinearLayer,
// DecoderStack, explain. Arrays cross without copies where the layout allows: NumPy through the
// buffer protocol, PyTorch through DLPack; outputs are arrays of the kind that came in, over the
// library's own tensor (kept alive by the array).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "dlpack.h"
#include "tpl/backends.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"
#include "tpl/linear.h"
#include "tpl/model.h"
#include "tpl/plan.h"
#include "tpl/process_groups.h"
#include "tpl/profile.h"
#include "tpl/selection.h"

namespace py = pybind11;

namespace tpl::python {

namespace {

const Where kWhere{"python"};

nlohmann::json to_json(py::handle obj) {
  const std::string text = py::str(py::module_::import("json").attr("dumps")(obj));
  return nlohmann::json::parse(text);
}
py::object from_json(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump());
}

// torch.utils.dlpack's C functions, looked up once (about 1 us a call less than __dlpack__
// and an import per call). Deliberately never released: they live as long as the interpreter.
struct TorchDlpack {
  PyObject* to = nullptr;
  PyObject* from = nullptr;
};
const TorchDlpack& torch_dlpack() {
  static const TorchDlpack fns = [] {
    py::module_ m = py::module_::import("torch.utils.dlpack");
    return TorchDlpack{py::object(m.attr("to_dlpack")).release().ptr(),
                       py::object(m.attr("from_dlpack")).release().ptr()};
  }();
  return fns;
}
// f(arg), a new reference; error_already_set when f raised.
py::object call1(PyObject* f, py::handle arg) {
  PyObject* r = PyObject_CallOneArg(f, arg.ptr());
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// tplinear's dtypes in DLPack's terms.
struct DlType {
  DType dtype;
  std::uint8_t code, bits;
  const char* numpy;  // buffer format; "" = none (NumPy has no bfloat16)
};
constexpr DlType kDlTypes[] = {{DType::kF32, kDLFloat, 32, "f"},
                               {DType::kBF16, kDLBfloat, 16, ""},
                               {DType::kF16, kDLFloat, 16, "e"},
                               {DType::kI8, kDLInt, 8, "b"},
                               {DType::kI32, kDLInt, 32, "i"}};

// A torch.Tensor (or subclass, e.g. nn.Parameter). Without torch imported nothing can be one,
// so the module is only looked up, never imported; its Tensor type is kept once found.
bool is_torch(py::handle obj) {
  static PyObject* tensor_type = nullptr;
  if (!tensor_type) {
    PyObject* torch = PyDict_GetItemString(PyImport_GetModuleDict(), "torch");  // borrowed
    if (!torch) return false;
    tensor_type = PyObject_GetAttrString(torch, "Tensor");  // kept: lives with the interpreter
    if (!tensor_type) throw py::error_already_set();
  }
  const int r = PyObject_IsInstance(obj.ptr(), tensor_type);
  if (r < 0) throw py::error_already_set();
  return r == 1;
}

// ---- arrays in ---------------------------------------------------------------------------------

// A 2-D view of a caller's array, without a copy. The array stays alive for the view's life
// (`owner`); a consumed DLPack tensor is released when the view goes.
class ArrayIn {
 public:
  ArrayIn(py::handle obj, const char* what) : owner_(py::reinterpret_borrow<py::object>(obj)) {
    torch_ = is_torch(obj);
    if (torch_)
      from_dlpack(obj, what);
    else
      from_buffer(obj, what);
  }
  ~ArrayIn() {
    if (managed_ && managed_->deleter) managed_->deleter(managed_);
  }
  ArrayIn(const ArrayIn&) = delete;
  ArrayIn& operator=(const ArrayIn&) = delete;
  const TensorView& view() const { return view_; }
  bool torch() const { return torch_; }

 private:
  // `name` gives the caller's dtype for the error only: formatting it costs a call into Python.
  template <typename Name>
  static DType from_code(std::uint8_t code, std::uint8_t bits, const char* what, Name name) {
    for (const DlType& d : kDlTypes)
      if (d.code == code && d.bits == bits) return d.dtype;
    TPL_THROW(InvalidArgument, kWhere, what, " is ", name(),
              ": tplinear takes float32, bfloat16 (torch), float16, int8 or int32; convert it "
              "first (a copy, e.g. x.astype(numpy.float32) or x.float())");
  }
  void set(void* data, DType dt, std::int64_t ndim, const std::int64_t* shape,
           const std::int64_t* strides, const char* what) {
    TPL_CHECK(ndim == 1 || ndim == 2, kWhere, what, " must be 1-D or 2-D, got ", ndim,
              " dimensions");
    const std::int64_t rows = ndim == 2 ? shape[0] : 1, cols = shape[ndim - 1];
    std::int64_t row_stride = cols;
    if (strides) {
      const bool inner = strides[ndim - 1] == 1 || cols <= 1;
      if (ndim == 2 && rows > 1) row_stride = strides[0];
      TPL_CHECK(inner && row_stride >= cols, kWhere, what,
                " is not row-major with unit column stride (strides ", strides[0],
                ndim == 2 ? ", " + std::to_string(strides[ndim - 1]) : std::string(),
                " elements): pass a contiguous array (numpy.ascontiguousarray or "
                ".contiguous(), a copy)");
    }
    view_ = TensorView(data, dt, rows, cols, row_stride);
  }
  void from_dlpack(py::handle obj, const char* what) {
    // An nn.Parameter (requires_grad) is read through a detached view: the same memory.
    py::object src = py::reinterpret_borrow<py::object>(obj);
    if (src.attr("requires_grad").cast<bool>()) src = src.attr("detach")();
    py::object cap = call1(torch_dlpack().to, src);
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
    if (!m) throw py::error_already_set();
    PyCapsule_SetName(cap.ptr(), "used_dltensor");  // ours now: released in ~ArrayIn
    managed_ = m;
    const DLTensor& t = m->dl_tensor;
    TPL_CHECK(t.device.device_type == kDLCPU, kWhere, what,
              " is on a device; this module runs the host backends (move it with .cpu())");
    TPL_CHECK(t.dtype.lanes == 1, kWhere, what, " has vector lanes");
    const DType dt = from_code(t.dtype.code, t.dtype.bits, what,
                               [&] { return std::string(py::str(obj.attr("dtype"))); });
    set(static_cast<char*>(t.data) + t.byte_offset, dt, t.ndim, t.shape, t.strides, what);
  }
  void from_buffer(py::handle obj, const char* what) {
    if (!PyObject_CheckBuffer(obj.ptr()))
      TPL_THROW(InvalidArgument, kWhere, what, " must be a numpy array or a torch tensor, got ",
                std::string(py::str(py::type::of(obj))));
    const py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
    DType dt = DType::kF32;
    if (info.format == "f" && info.itemsize == 4)
      dt = DType::kF32;
    else if (info.format == "e" && info.itemsize == 2)
      dt = DType::kF16;
    else if (info.format == "b" && info.itemsize == 1)
      dt = DType::kI8;
    else if ((info.format == "i" || info.format == "l") && info.itemsize == 4)
      dt = DType::kI32;
    else  // throws, naming the dtype
      dt = from_code(255, 0, what, [&] {
        return py::hasattr(obj, "dtype") ? std::string(py::str(obj.attr("dtype")))
                                         : "of buffer format '" + info.format + "'";
      });
    std::vector<std::int64_t> shape(info.shape.begin(), info.shape.end()), strides;
    for (auto s : info.strides) {
      TPL_CHECK(s % info.itemsize == 0, kWhere, what, " has a misaligned stride of ", s, " bytes");
      strides.push_back(s / info.itemsize);
    }
    set(info.ptr, dt, info.ndim, shape.data(), strides.data(), what);
  }

  py::object owner_;
  TensorView view_;
  bool torch_ = false;
  DLManagedTensor* managed_ = nullptr;
};

// ---- arrays out --------------------------------------------------------------------------------

struct Exported {  // a library tensor lent to Python through DLPack
  Tensor tensor;
  std::int64_t shape[2], strides[2];
  DLManagedTensor managed;
};

py::capsule dlpack_capsule(Tensor t) {
  auto* e = new Exported{std::move(t), {}, {}, {}};
  const TensorView v = e->tensor.view();
  e->shape[0] = v.rows(), e->shape[1] = v.cols();
  e->strides[0] = v.stride(), e->strides[1] = 1;
  DLDataType dt{};
  for (const DlType& d : kDlTypes)
    if (d.dtype == v.dtype()) dt = {d.code, d.bits, 1};
  e->managed.dl_tensor = {v.data(), {kDLCPU, 0}, 2, dt, e->shape, e->strides, 0};
  e->managed.manager_ctx = e;
  e->managed.deleter = [](DLManagedTensor* m) { delete static_cast<Exported*>(m->manager_ctx); };
  // An unconsumed capsule frees its tensor; a consumer renames it and calls the deleter itself.
  return py::capsule(&e->managed, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      m->deleter(m);
    }
  });
}

// A NumPy array over a tensor's memory; `base` keeps the memory alive.
py::object numpy_view(const TensorView& v, py::handle base) {
  // NumPy's dtype objects, made once per dtype (parsing the format costs a call each time) and
  // kept for the interpreter's life.
  static PyObject* dtypes[std::size(kDlTypes)] = {};
  std::size_t i = 0;
  while (i < std::size(kDlTypes) && kDlTypes[i].dtype != v.dtype()) ++i;
  TPL_CHECK_T(i < std::size(kDlTypes) && *kDlTypes[i].numpy, InvalidArgument, kWhere, "a ",
              dtype_name(v.dtype()),
              " tensor has no numpy dtype: pass torch tensors to bfloat16 layers");
  if (!dtypes[i]) dtypes[i] = py::dtype(kDlTypes[i].numpy).release().ptr();
  const auto es = static_cast<py::ssize_t>(dtype_size(v.dtype()));
  return py::array(py::reinterpret_borrow<py::dtype>(dtypes[i]), {v.rows(), v.cols()},
                   {v.stride() * es, es}, v.data(), base);
}

// The output as the kind of array that came in: torch through DLPack, numpy over the buffer.
py::object array_out(Tensor t, bool torch) {
  if (torch) return call1(torch_dlpack().from, dlpack_capsule(std::move(t)));
  auto* owned = new Tensor(std::move(t));
  py::capsule base(owned, [](void* p) { delete static_cast<Tensor*>(p); });
  return numpy_view(owned->view(), base);
}

// ---- world, config, env ------------------------------------------------------------------------

struct World {
  std::shared_ptr<MpiSession> session;
  std::unique_ptr<Communicator> comm;
  std::string choice;
  bool board = false;  // the host's progress board is up (start_progress_board)

  static std::shared_ptr<World> from_mpi4py(py::object mpi_comm, bool progress_board) {
    py::module_ mpi = py::module_::import("mpi4py.MPI");
    // mpi4py's MPI must be the library tplinear was built with: one MPI per process.
    const std::string theirs = py::str(mpi.attr("Get_library_version")());
    const std::string ours = mpi_library_version();
    auto first_line = [](const std::string& s) { return s.substr(0, s.find_first_of("\n,")); };
    TPL_CHECK_T(first_line(theirs) == first_line(ours), ConfigError, kWhere, "mpi4py runs on '",
                first_line(theirs), "' but tplinear was built with '", first_line(ours),
                "': both must use the same MPI library");
    auto w = std::make_shared<World>();
    w->session = std::make_shared<MpiSession>();  // attaches: mpi4py owns MPI's lifetime
    const int handle = mpi_comm.attr("py2f")().cast<int>();
    py::gil_scoped_release nogil;  // collective: other Python threads may run meanwhile
    // Before the world, so that its first collective is on the board too.
    if (progress_board) w->board = w->session->start_progress_board();
    w->comm = w->session->world_of(handle, &w->choice);
    return w;
  }
};

struct Env {
  std::shared_ptr<World> world;
  Config config;
  ModelInfo model;
  Features features;
  std::unique_ptr<ProcessGroups> groups;
  std::unique_ptr<Selector> selector;
  std::unique_ptr<OpEnv> env;
  std::unique_ptr<Communicator> gemm_comm;
  std::unique_ptr<CpuGemmChooser> chooser;

  Env(std::shared_ptr<World> w, const Config& c, py::object hf_config)
      : world(std::move(w)), config(c) {
    config.validate();
    if (!hf_config.is_none()) model = ModelInfo::from_json(to_json(hf_config));
    features = Features::derive(config, model);
    Communicator& comm = *world->comm;
    groups = std::make_unique<ProcessGroups>(comm, config.layout, group_sizes(config, features));
    selector = std::make_unique<Selector>(config, model);
    env = std::make_unique<OpEnv>(OpEnv{config, features, *groups});
    // As DecoderStack: measured GEMM choices, rank 0's holding on every rank.
    chooser = std::make_unique<CpuGemmChooser>();
    if (comm.size() > 1) {
      gemm_comm = comm.split(0, comm.rank());
      chooser->set_agreement(gemm_agreement_from_root(*gemm_comm));
    }
    env->cpu_gemm = chooser.get();
  }
};

LayerKind parse_kind(const std::string& s) {
  if (s == "column") return LayerKind::kColumn;
  if (s == "merged_column") return LayerKind::kMergedColumn;
  if (s == "qkv") return LayerKind::kQkv;
  if (s == "row") return LayerKind::kRow;
  if (s == "replicated") return LayerKind::kReplicated;
  TPL_THROW(InvalidArgument, kWhere, "kind '", s,
            "' is not column, merged_column, qkv, row or replicated");
}

class Layer {
 public:
  Layer(std::shared_ptr<Env> env, const std::string& prefix, const std::string& kind,
        py::handle weight, py::object bias, std::vector<std::int64_t> output_sizes,
        std::vector<std::int64_t> qkv, std::int64_t in_unit, bool gather_output,
        bool input_is_parallel, bool reduce_results, bool skip_bias_add, py::object quant)
      : env_(std::move(env)) {
    const ArrayIn w(weight, "weight");
    std::optional<ArrayIn> b;
    if (!bias.is_none()) b.emplace(bias, "bias");
    LayerSpec spec;
    spec.prefix = prefix;
    spec.kind = parse_kind(kind);
    spec.in_features = w.view().cols();
    spec.out_features = w.view().rows();
    spec.output_sizes = std::move(output_sizes);
    if (spec.kind == LayerKind::kQkv) {
      TPL_CHECK(qkv.size() == 3, kWhere, "a qkv layer needs qkv=(heads, kv_heads, head_dim)");
      spec.qkv = {qkv[0], qkv[1], qkv[2]};
    }
    spec.in_unit = in_unit;
    spec.bias = b.has_value();
    spec.dtype = w.view().dtype();
    // W8A8 (seed §8): an int8 weight with its checkpoint's vectors; the layer computes in f32 (or
    // the dtype= given in quant) and the float bias lives in quant_bias.
    std::optional<W8A8Params> w8a8;
    if (!quant.is_none()) {
      TPL_CHECK(!b, kWhere, "a W8A8 layer takes no bias=: fold it into quant['quant_bias']");
      TPL_CHECK(w.view().dtype() == DType::kI8, kWhere, "a W8A8 layer (quant=) needs an int8 ",
                "weight, got ", w.view().describe());
      const py::dict q = quant.cast<py::dict>();
      for (const char* key : {"deq_scale", "quant_bias", "input_scale", "input_offset"})
        TPL_CHECK(q.contains(key), kWhere, "quant= needs '", key, "' (deq_scale [out] f32, ",
                  "quant_bias [out] int32, input_scale float, input_offset int)");
      const ArrayIn deq(q["deq_scale"], "quant['deq_scale']");
      const ArrayIn qb(q["quant_bias"], "quant['quant_bias']");
      const std::int64_t out = w.view().rows();
      TPL_CHECK(deq.view().dtype() == DType::kF32 && deq.view().numel() == out, kWhere,
                "quant['deq_scale'] must be float32 with ", out, " values, got ",
                deq.view().describe());
      TPL_CHECK(qb.view().dtype() == DType::kI32 && qb.view().numel() == out, kWhere,
                "quant['quant_bias'] must be int32 with ", out, " values, got ",
                qb.view().describe());
      W8A8Params p;
      p.weight = Tensor::copy_of(w.view());
      p.deq_scale = Tensor::copy_of(deq.view().reshape(1, out));
      p.quant_bias = Tensor::copy_of(qb.view().reshape(1, out));
      p.input_scale = q["input_scale"].cast<float>();
      p.input_offset = q["input_offset"].cast<std::int32_t>();
      TPL_CHECK(p.input_scale > 0 && p.input_offset >= -128 && p.input_offset <= 127, kWhere,
                "quant: input_scale must be > 0 and input_offset in [-128, 127], got ",
                p.input_scale, " and ", p.input_offset);
      spec.dtype = q.contains("dtype") ? parse_dtype(q["dtype"].cast<std::string>()) : DType::kF32;
      w8a8 = std::move(p);
    }
    spec.flags.gather_output = gather_output;
    spec.flags.input_is_parallel = input_is_parallel;
    spec.flags.reduce_results = reduce_results;
    spec.flags.skip_bias_add = skip_bias_add;
    const TensorView bv = b ? b->view() : TensorView();
    py::gil_scoped_release nogil;
    if (w8a8)
      layer_ = std::make_unique<LinearLayer>(spec, *env_->selector, *env_->env, GemmBackend::kCpu,
                                             *w8a8);
    else
      layer_ = std::make_unique<LinearLayer>(spec, *env_->selector, *env_->env, GemmBackend::kCpu,
                                             w.view(), bv);
  }

  // x: this rank's rows (all of them, or its sequence shard under FlashComm1); tokens: the
  // batch's token count across the group (default: x's rows).
  py::object forward(py::handle x, std::int64_t tokens) {
    const ArrayIn in(x, "x");
    LinearOutput out;
    {
      py::gil_scoped_release nogil;
      out = run(in.view(), tokens);
    }
    placement_ = out.placement.to_string();
    return array_out(std::move(out.output), in.torch());
  }
  // The same call timed in C++, for the wrapper's overhead (bench/python_overhead.py).
  double cpp_seconds_per_forward(py::handle x, int iters) {
    const ArrayIn in(x, "x");
    py::gil_scoped_release nogil;
    run(in.view(), -1);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) run(in.view(), -1);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  }

  const LinearLayer& layer() const { return *layer_; }
  const std::string& placement() const { return placement_; }

 private:
  LinearOutput run(const TensorView& x, std::int64_t tokens) {
    const ForwardContext ctx = ForwardContext::make(env_->config, env_->features, env_->model,
                                                    tokens >= 0 ? tokens : x.rows());
    return layer_->forward(x, ctx);
  }
  std::shared_ptr<Env> env_;
  std::unique_ptr<LinearLayer> layer_;
  std::string placement_;
};

// Weights from a dict of arrays (name -> [rows, cols]); each read copies the block asked for.
class DictWeights final : public WeightProvider {
 public:
  explicit DictWeights(py::dict d) {
    for (auto item : d)
      arrays_.emplace(py::str(item.first), std::make_unique<ArrayIn>(item.second, "weight"));
  }
  Tensor get(const std::string& name, std::int64_t rows, std::int64_t cols, DType dtype,
             float) const override {
    const auto it = arrays_.find(name);
    TPL_CHECK(it != arrays_.end(), kWhere, "weights has no tensor '", name, "'");
    const TensorView v = it->second->view();
    TPL_CHECK(v.rows() == rows && v.cols() == cols, kWhere, "weights['", name, "'] is ",
              v.describe(), ", the model needs [", rows, ", ", cols, "]");
    Tensor t(dtype, rows, cols);
    convert_into(v, t);
    return t;
  }

 private:
  std::map<std::string, std::unique_ptr<ArrayIn>> arrays_;
};

ModelSpec model_of(py::handle model) {
  if (py::isinstance<py::str>(model)) {
    const std::string s = py::str(model);
    return ModelSpec::load(s);  // a preset, a config.json or a checkpoint directory
  }
  return ModelSpec::from_hf_json(to_json(model), "hf_config");
}

// A plan (tpl/plan.h) with the planner's notes (left-out candidates, scaled shapes).
struct PyPlan {
  Plan plan;
  std::vector<std::string> notes;
};

py::dict bucket_dict(const PlanBucket& b) {
  py::dict d;
  d["tokens"] = b.tokens;
  d["max_tokens"] = b.max_tokens;
  d["weight"] = b.weight;
  d["strategy"] = b.strategy;
  d["predicted_ms"] = b.predicted_ms;
  d["runner_up"] = b.runner_up;
  d["runner_up_ms"] = b.runner_up_ms;
  d["why"] = b.why;
  return d;
}

// tplinear.plan(): `tplinear plan` for a program's own candidate configs. Collective (the
// calibration, when no profile is given, measures this machine over `world`).
std::shared_ptr<PyPlan> make_py_plan(std::shared_ptr<World> world, py::handle model,
                                     py::dict candidates, const std::string& workload,
                                     py::object profile, const std::string& dtype, bool w8a8,
                                     double margin, double memory_cap_gib, bool quick) {
  const ModelSpec m = model_of(model);
  TPL_CHECK(margin >= 0 && margin < 0.5, kWhere, "margin must be in [0, 0.5), got ", margin);
  std::vector<PlanCandidate> cands;
  for (auto item : candidates) {
    Config c = item.second.cast<Config>();
    c.validate();
    cands.push_back({py::str(item.first), std::move(c)});
  }
  TPL_CHECK(!cands.empty(), kWhere,
            "candidates must name at least one config, e.g. {\"standard\": Config({\"tp\": 2})}");
  PlanOptions po;
  po.workload = parse_workload(workload);
  po.margin = margin;
  po.memory_cap_bytes = memory_cap_gib * 1024.0 * 1024 * 1024;
  po.inputs.dtype = parse_dtype(dtype);
  po.inputs.w8a8 = w8a8;
  auto out = std::make_shared<PyPlan>();
  Communicator& comm = *world->comm;
  const std::string path = profile.is_none() ? std::string() : std::string(py::str(profile));
  py::gil_scoped_release nogil;
  MachineProfile prof;
  if (path.empty()) {
    CalibrateOptions co;
    co.quick = quick;
    std::vector<Config> configs;
    for (const auto& c : cands) configs.push_back(c.config);
    std::vector<std::int64_t> tokens;
    for (const auto& [t, w] : po.workload) tokens.push_back(t);
    co.layer_shapes = CostModel::gemm_requests(m, configs, comm.size(), tokens, po.inputs);
    prof = calibrate(comm, co);
  } else {
    prof = MachineProfile::from_file(path);
    for (const auto& d : prof.mismatches(this_machine(comm.size())))
      out->notes.push_back("profile " + path + ": " + d);
  }
  po.inputs.spare_core = prof.machine.spare_core();
  const CostModel cost(prof);
  out->plan = make_plan(cost, m, comm.size(), cands, po, &out->notes);
  return out;
}

class Stack {
 public:
  Stack(std::shared_ptr<World> world, py::handle model, py::object config, py::object plan,
        const std::string& dtype, bool w8a8, std::uint64_t seed, py::object weights,
        std::int64_t layers)
      : world_(std::move(world)), model_(model_of(model)) {
    if (layers > 0) model_.layers = std::min(model_.layers, layers);
    StackOptions so;
    so.dtype = parse_dtype(dtype);
    so.w8a8 = w8a8;
    if (weights.is_none())
      source_ = make_random_weights(seed);
    else
      source_ = std::make_unique<DictWeights>(weights.cast<py::dict>());
    Communicator& comm = *world_->comm;
    if (!plan.is_none()) {
      // A Plan from tplinear.plan(), or the path of a plan.json.
      const Plan p = py::isinstance<PyPlan>(plan) ? plan.cast<const PyPlan&>().plan
                                                  : Plan::from_file(py::str(plan));
      py::gil_scoped_release nogil;
      stack_ = std::make_unique<DecoderStack>(comm, model_, p, *source_, so);
    } else {
      Config cfg = config.is_none() ? Config{} : config.cast<Config>();
      if (config.is_none()) cfg.layout = {1, 1, comm.size()};
      py::gil_scoped_release nogil;
      stack_ = std::make_unique<DecoderStack>(comm, model_, cfg, *source_, so);
    }
  }
  py::object forward(py::handle x) {
    const ArrayIn in(x, "x");
    Tensor y;
    {
      py::gil_scoped_release nogil;
      y = stack_->forward(in.view());
    }
    return array_out(std::move(y), in.torch());
  }
  const DecoderStack& stack() const { return *stack_; }
  const ModelSpec& model() const { return model_; }

 private:
  std::shared_ptr<World> world_;
  ModelSpec model_;
  std::unique_ptr<WeightProvider> source_;
  std::unique_ptr<DecoderStack> stack_;
};

py::list explain(py::handle model, const Config& config, int rank) {
  const ModelSpec m = model_of(model);
  const Config cfg = [&] {
    Config c = config;
    c.validate();
    return c;
  }();
  const Selector sel(cfg, m.info);
  py::list rows;
  for (std::int64_t l = 0; l < m.layers; ++l)
    for (const LayerSpec& spec : decoder_linear_specs(m, l, DType::kF32)) {
      const OpChoice c = sel.choose(spec.prefix, direction_of(spec.kind), spec.disable_tp);
      const ShardCoord sc = shard_coord(c, cfg, rank);
      py::dict row;
      row["layer"] = spec.prefix;
      row["op"] = op_kind_name(c.kind);
      row["group"] = sc.group;
      row["tp_rank"] = sc.tp_rank;
      row["tp_size"] = sc.tp_size;
      row["rule"] = c.rule;
      rows.append(row);
    }
  return rows;
}

}  // namespace
}  // namespace tpl::python

PYBIND11_MODULE(_tplinear, m) {
  using namespace tpl;
  using namespace tpl::python;
  m.doc() = "tplinear: tensor-parallel linear layers over MPI (docs/python.md)";
  // Translators run newest first: the base is registered before the types derived from it.
  auto base = py::register_exception<Error>(m, "Error", PyExc_RuntimeError);
  py::register_exception<InvalidArgument>(m, "InvalidArgument", base);
  py::register_exception<ConfigError>(m, "ConfigError", base);
  py::register_exception<Unsupported>(m, "Unsupported", base);
  py::register_exception<CommError>(m, "CommError", base);
  py::register_exception<BackendError>(m, "BackendError", base);
  py::register_exception<IoError>(m, "IoError", base);
  py::register_exception<OutOfMemory>(m, "OutOfMemory", base);

  py::class_<World, std::shared_ptr<World>>(m, "World")
      .def_static("from_mpi4py", &World::from_mpi4py, py::arg("comm"),
                  py::arg("progress_board") = false,
                  "A world over a duplicate of an mpi4py communicator (TPL_COMM picks MPI or "
                  "SHM). progress_board=True, collective over COMM_WORLD, makes the host's "
                  "progress board, so that a deadline names who never joined; then drop the "
                  "World at the same point on every rank")
      .def_property_readonly("progress_board", [](const World& w) { return w.board; })
      .def_property_readonly("rank", [](const World& w) { return w.comm->rank(); })
      .def_property_readonly("size", [](const World& w) { return w.comm->size(); })
      .def_property_readonly("communicator", [](const World& w) { return w.choice; })
      .def("barrier", [](World& w) {
        py::gil_scoped_release nogil;
        w.comm->barrier();
      });

  py::class_<Config>(m, "Config")
      .def(py::init(
               [](py::object d) { return d.is_none() ? Config{} : Config::from_json(to_json(d)); }),
           py::arg("options") = py::none(), "From a dict of docs/config.md's keys")
      .def_static("from_json",
                  [](const std::string& s) { return Config::from_json(nlohmann::json::parse(s)); })
      .def("to_dict", [](const Config& c) { return from_json(c.to_json()); })
      .def("__repr__",
           [](const Config& c) { return "tplinear.Config(" + c.to_json().dump() + ")"; });

  py::class_<Env, std::shared_ptr<Env>>(m, "Env").def(
      py::init<std::shared_ptr<World>, const Config&, py::object>(), py::arg("world"),
      py::arg("config"), py::arg("hf_config") = py::none(),
      "The process groups and op selection of a config (collective over the world)");

  py::class_<Layer>(m, "LinearLayer")
      .def(py::init<std::shared_ptr<Env>, const std::string&, const std::string&, py::handle,
                    py::object, std::vector<std::int64_t>, std::vector<std::int64_t>, std::int64_t,
                    bool, bool, bool, bool, py::object>(),
           py::arg("env"), py::arg("prefix"), py::arg("kind"), py::arg("weight"),
           py::arg("bias") = py::none(), py::arg("output_sizes") = std::vector<std::int64_t>{},
           py::arg("qkv") = std::vector<std::int64_t>{}, py::arg("in_unit") = 1,
           py::arg("gather_output") = false, py::arg("input_is_parallel") = true,
           py::arg("reduce_results") = true, py::arg("skip_bias_add") = false,
           py::arg("quant") = py::none(),
           "A layer from the full weight [out, in] (a view; this rank keeps a copy of its shard)")
      .def("forward", &Layer::forward, py::arg("x"), py::arg("tokens") = -1)
      .def("_cpp_seconds_per_forward", &Layer::cpp_seconds_per_forward, py::arg("x"),
           py::arg("iters"))
      .def_property_readonly("op",
                             [](const Layer& l) { return op_kind_name(l.layer().choice().kind); })
      .def_property_readonly("rule", [](const Layer& l) { return l.layer().choice().rule; })
      .def_property_readonly("tp_rank", [](const Layer& l) { return l.layer().tp_rank(); })
      .def_property_readonly("tp_size", [](const Layer& l) { return l.layer().tp_size(); })
      .def_property_readonly("placement", &Layer::placement,
                             "placement of the last forward's output")
      .def(
          "local_weight",
          [](py::object self) {
            return numpy_view(self.cast<const Layer&>().layer().local_weight(), self);
          },
          "this rank's weight shard, a view (no copy) kept alive by the layer");

  py::class_<PyPlan, std::shared_ptr<PyPlan>>(m, "Plan")
      .def_static(
          "load",
          [](const std::string& path) {
            auto p = std::make_shared<PyPlan>();
            p->plan = Plan::from_file(path);
            return p;
          },
          py::arg("path"), "A plan.json written by `tplinear plan --out` or Plan.save")
      .def_property_readonly("layout", [](const PyPlan& p) { return p.plan.layout; })
      .def_property_readonly("world", [](const PyPlan& p) { return p.plan.world; })
      .def_property_readonly("notes", [](const PyPlan& p) { return p.notes; })
      .def_property_readonly("buckets",
                             [](const PyPlan& p) {
                               py::list l;
                               for (const auto& b : p.plan.buckets) l.append(bucket_dict(b));
                               return l;
                             })
      .def("bucket_for",
           [](const PyPlan& p, std::int64_t t) { return bucket_dict(p.plan.bucket_for(t)); })
      .def("config_for", [](const PyPlan& p, std::int64_t t) { return p.plan.config_for(t); })
      .def("to_json", [](const PyPlan& p) { return p.plan.to_json().dump(2); })
      .def("save", [](const PyPlan& p, const std::string& path) {
        std::ofstream f(path);
        TPL_CHECK_T(f.good(), IoError, kWhere, "cannot write '", path, "'");
        f << p.plan.to_json().dump(2) << "\n";
        TPL_CHECK_T(f.good(), IoError, kWhere, "cannot write '", path, "'");
      });
  m.def("plan", &make_py_plan, py::arg("world"), py::arg("model"), py::arg("candidates"),
        py::arg("workload") = "16,256,1024", py::arg("profile") = py::none(),
        py::arg("dtype") = "f32", py::arg("w8a8") = false, py::arg("margin") = 0.03,
        py::arg("memory_cap_gib") = 0.0, py::arg("quick") = false,
        "The fastest of `candidates` (name -> Config; the first is the baseline) per token "
        "bucket of `workload`, by the cost model over `profile` (a calibrate JSON) or, without "
        "one, over this machine measured now (collective)");

  py::class_<Stack>(m, "DecoderStack")
      .def(py::init<std::shared_ptr<World>, py::handle, py::object, py::object, const std::string&,
                    bool, std::uint64_t, py::object, std::int64_t>(),
           py::arg("world"), py::arg("model"), py::arg("config") = py::none(),
           py::arg("plan") = py::none(), py::arg("dtype") = "f32", py::arg("w8a8") = false,
           py::arg("seed") = 1, py::arg("weights") = py::none(), py::arg("layers") = 0)
      .def("forward", &Stack::forward, py::arg("x"))
      .def("strategy_for", [](const Stack& s, std::int64_t t) { return s.stack().strategy_for(t); })
      .def_property_readonly("hidden", [](const Stack& s) { return s.model().hidden; })
      .def_property_readonly("layers", [](const Stack& s) { return s.model().layers; })
      .def("report", [](const Stack& s) {
        py::list rows;
        for (const LayerReport& r : s.stack().report()) {
          py::dict d;
          d["layer"] = r.prefix, d["op"] = r.op, d["group"] = r.group;
          d["tp_rank"] = r.tp_rank, d["tp_size"] = r.tp_size;
          rows.append(d);
        }
        return rows;
      });

  m.def("explain", &explain, py::arg("model"), py::arg("config"), py::arg("rank") = 0,
        "Every linear layer's op, group and rule for a config, as a list of dicts");
  m.def("built_backends", &built_backends);
  m.def("mpi_library_version", &mpi_library_version);
  m.def(
      "_data_ptr",
      [](py::handle x) {
        const ArrayIn in(x, "x");
        return reinterpret_cast<std::uintptr_t>(in.view().data());
      },
      "the address tplinear reads x at (tests: no copy was made)");
}
