// The one place that ranks the CPU GEMM implementations (docs/gemm.md): the order per dtype and
// ISA, the measurement among those that serve, and the exactness probe before first use.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>

#include "gemm/cpu_gemm_impls.h"
#include "tpl/cpu_gemm.h"
#include "tpl/error.h"

namespace tpl {
namespace {

const Where kWhere{"cpu_gemm"};
// A later implementation in the list replaces an earlier one only when it is this much faster:
// timings on a shared machine vary by 10-25 %, and an unstable choice could differ per rank.
constexpr double kMargin = 0.9;

std::string dtypes(const GemmDesc& d) {
  return std::string(dtype_name(d.act)) + " x " + dtype_name(d.weight) + " -> " + dtype_name(d.out);
}

bool is_int8(const GemmDesc& d) {
  return d.act == DType::kI8 && d.weight == DType::kI8 && d.out == DType::kI32;
}

// The list, best first where nothing is measured (docs/gemm.md has the measurements behind it).
std::vector<std::string> order_for(const GemmDesc& d, const CpuInfo& cpu) {
  if (is_int8(d)) return {"onednn", "avx2_int8", "reference"};
  if (d.act == DType::kBF16 && d.weight == DType::kBF16)
    return {"onednn", "bf16_via_f32", "reference"};
  if (d.act == DType::kF32 && d.weight == DType::kF32 && d.out == DType::kF32) {
    // Below AVX-512 oneDNN 2.6 runs f32 matmuls on gemm:jit, about half OpenBLAS's speed at
    // M >= 256; its 1x1 convolution (jit_1x1:avx2) matches OpenBLAS there and streams the
    // weight 1.3-2.9x faster at decode M, so it comes first (measured at m_hint, it keeps its
    // place unless another is 10 % faster).
    if (cpu.has(CpuIsa::kAvx512Core)) return {"onednn", "onednn_conv", "openblas", "reference"};
    return {"onednn_conv", "openblas", "onednn", "reference"};
  }
  return {"reference"};
}

// Random operands: N(0, 1) floats (rounded to the dtype), int8 uniform over `lo`..127.
Tensor random_tensor(DType dtype, std::int64_t rows, std::int64_t cols, int lo,
                     std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  Tensor t(dtype, rows, cols);
  if (dtype == DType::kI8) {
    std::uniform_int_distribution<int> dist(lo, 127);
    auto* p = t.ptr<std::int8_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<std::int8_t>(dist(gen));
    return t;
  }
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return Tensor::from_f32(v, rows, cols, dtype);
}

// Best of a few runs at M = m, after one untimed run (plans, JIT, first touch).
double time_ms(Gemm& g, std::int64_t m) {
  const GemmDesc& d = g.desc();
  const Tensor x = random_tensor(d.act, m, d.k, -128, 7);
  Tensor y(d.out, m, d.n);
  g.run(x, y, false);
  double best = std::numeric_limits<double>::infinity(), total = 0;
  for (int r = 0; r < 5 && (r < 2 || total < 100.0); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    g.run(x, y, false);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, ms);
    total += ms;
  }
  return best;
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

}  // namespace

CpuGemmOptions CpuGemmOptions::from_env(bool measure_default) {
  CpuGemmOptions o;
  const std::string select = env_or("TPL_GEMM_SELECT", "");
  if (select.empty()) {
    o.measure = measure_default;
  } else if (select == "measure" || select == "table") {
    o.measure = select == "measure";
  } else {
    TPL_THROW(ConfigError, kWhere, "unknown TPL_GEMM_SELECT value '", select,
              "' (valid: measure, table)");
  }
  std::stringstream force(env_or("TPL_GEMM", ""));
  for (std::string item; std::getline(force, item, ',');)
    if (!item.empty()) o.force.push_back(item);
  if (const std::string m = env_or("TPL_GEMM_M", ""); !m.empty()) {
    char* end = nullptr;
    const long long v = std::strtoll(m.c_str(), &end, 10);
    TPL_CHECK_T(end && *end == '\0' && v > 0, ConfigError, kWhere,
                "TPL_GEMM_M must be a positive "
                "row count, got '",
                m, "'");
    o.m_hint = v;
  }
  o.log = env_or("TPL_LOG", "").find("gemm") != std::string::npos;
  return o;
}

CpuGemmChooser::CpuGemmChooser(CpuInfo cpu, CpuGemmOptions options)
    : CpuGemmChooser(
          cpu, options,
          built_cpu_gemm_impls(options.threads > 0 ? options.threads
                                                   : std::max(1, omp_get_max_threads()))) {}

CpuGemmChooser::CpuGemmChooser(CpuInfo cpu, CpuGemmOptions options, std::vector<CpuGemmImpl> impls)
    : cpu_(std::move(cpu)), options_(std::move(options)), impls_(std::move(impls)) {
  TPL_CHECK(options_.m_hint > 0, kWhere, "m_hint must be positive, got ", options_.m_hint);
  // A forced name that no list has is a typo, not a request to ignore.
  for (const std::string& f : options_.force) {
    const bool known =
        std::any_of(impls_.begin(), impls_.end(), [&](const Impl& i) { return i.name == f; });
    if (!known) {
      std::string names;
      for (const Impl& i : impls_) names += i.name + ", ";
      names.resize(names.size() - 2);
      TPL_THROW(ConfigError, kWhere, "TPL_GEMM names unknown implementation '", f,
                "' (this build has: ", names, ")");
    }
  }
}

CpuGemmChooser::CpuGemmChooser() : CpuGemmChooser(detect_cpu(), CpuGemmOptions::from_env()) {}

CpuGemmChooser::~CpuGemmChooser() = default;

int CpuGemmChooser::threads() const {
  return options_.threads > 0 ? options_.threads : std::max(1, omp_get_max_threads());
}

std::vector<const CpuGemmImpl*> CpuGemmChooser::ordered(const GemmDesc& desc) const {
  std::vector<const Impl*> v;
  for (const std::string& name : order_for(desc, cpu_))
    for (const Impl& i : impls_)
      if (i.name == name) v.push_back(&i);
  return v;
}

std::vector<GemmCandidate> CpuGemmChooser::candidates(const GemmDesc& desc) const {
  std::vector<GemmCandidate> v;
  for (const Impl* i : ordered(desc)) v.push_back({i->name, i->why_not(desc, cpu_), -1});
  return v;
}

double CpuGemmChooser::held_bytes_per_weight(const GemmDesc& desc) const {
  const std::vector<const Impl*> list = ordered(desc);
  auto held = [&](const Impl& i) {
    return i.held_bytes ? i.held_bytes(desc) : double(dtype_size(desc.weight));
  };
  for (const std::string& f : options_.force)  // as decide(): the first forced one that is listed
    for (const Impl* i : list)
      if (i->name == f) return held(*i);
  double most = -1;
  for (const Impl* i : list)
    if (i->name != "reference" && i->why_not(desc, cpu_).empty()) most = std::max(most, held(*i));
  if (most >= 0) return most;
  for (const Impl* i : list)
    if (i->name == "reference") return held(*i);
  return double(dtype_size(desc.weight));
}

std::unique_ptr<Gemm> CpuGemmChooser::make_impl(const Impl& impl, const GemmDesc& desc,
                                                TensorView weight, TensorView bias) {
  const GemmFactory f32 = [this](const GemmDesc& d, TensorView w, TensorView b) {
    struct Nest {
      int& n;
      explicit Nest(int& v) : n(++v) {}
      ~Nest() { --n; }
    } nest(nesting_);
    return make(d, w, b);
  };
  return impl.make(desc, weight, bias, f32);
}

void CpuGemmChooser::probe_once(const Impl& impl, const GemmDesc& desc) {
  const std::string key = impl.name + "/" + dtypes(desc);
  if (impl.name == "reference" || probed_.count(key)) return;
  // Small-integer floats make every partial sum exact, so any correct implementation matches
  // the reference bit for bit; for int8 the first rows are the pairs that saturate vpmaddubsw
  // (127 * 127 and -128 * -127, summed in pairs) and the rest span the whole W8A8 range.
  constexpr std::int64_t m = 5, n = 7, k = 80;
  GemmDesc d = desc;
  d.k = k;
  d.n = n;
  Tensor w(d.weight, n, k), x(d.act, m, k), bias;
  std::mt19937_64 gen(12345);
  std::uniform_int_distribution<int> small(-4, 4), full(-128, 127), wfull(-127, 127);
  for (std::int64_t r = 0; r < n; ++r)
    for (std::int64_t c = 0; c < k; ++c) {
      if (is_int8(d)) {
        int v = r == 0 ? -127 : r == 1 ? 127 : r == 2 ? 127 : wfull(gen);
        if (r == 3 && c == 5) v = -128;
        w.ptr<std::int8_t>()[r * k + c] = static_cast<std::int8_t>(v);
      } else {
        set_f32(w, r, c, static_cast<float>(small(gen)));
      }
    }
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t c = 0; c < k; ++c) {
      if (is_int8(d)) {
        const int v = r == 0 ? -128 : r == 1 ? 127 : full(gen);
        x.ptr<std::int8_t>()[r * k + c] = static_cast<std::int8_t>(v);
      } else {
        set_f32(x, r, c, static_cast<float>(small(gen)));
      }
    }
  const bool with_bias = !is_int8(d);
  if (with_bias) {
    bias = Tensor(DType::kF32, 1, n);
    for (std::int64_t c = 0; c < n; ++c) set_f32(bias, 0, c, static_cast<float>(small(gen)));
  }
  auto ref = make_reference_gemm(d, w, with_bias ? bias.view() : TensorView());
  auto got = make_impl(impl, d, w, with_bias ? bias.view() : TensorView());
  Tensor y_ref(d.out, m, n), y(d.out, m, n);
  ref->run(x, y_ref, with_bias);
  got->run(x, y, with_bias);
  const std::size_t esize = dtype_size(d.out);
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      if (std::memcmp(y.view().at(r, c), y_ref.view().at(r, c), esize) == 0) continue;
      const auto value = [&](const Tensor& t) -> double {
        return d.out == DType::kI32 ? t.ptr<std::int32_t>()[r * n + c] : get_f32(t, r, c);
      };
      TPL_THROW(BackendError, kWhere, "GEMM implementation '", got->name(),
                "' failed its exactness probe for ", dtypes(d), ": y[", r, ", ", c,
                "] = ", value(y), ", reference ", value(y_ref), " (CPU ", cpu_.model, ", ISA ",
                cpu_isa_name(cpu_.effective()), "); it is not used");
    }
  probed_.insert(key);
}

GemmChoice CpuGemmChooser::decide(const GemmDesc& desc, std::int64_t m, TensorView weight,
                                  TensorView bias, std::unique_ptr<Gemm>* keep) {
  GemmChoice c;
  const std::vector<const Impl*> list = ordered(desc);  // list[i] is c.candidates[i]
  for (const Impl* i : list) c.candidates.push_back({i->name, i->why_not(desc, cpu_), -1});
  auto find = [&](const std::string& name) -> GemmCandidate* {
    for (auto& cand : c.candidates)
      if (cand.name == name) return &cand;
    return nullptr;
  };
  for (const std::string& f : options_.force) {
    GemmCandidate* cand = find(f);
    if (!cand) continue;
    TPL_CHECK_T(cand->why_not.empty(), Unsupported, kWhere, "TPL_GEMM forces '", f, "' for ",
                dtypes(desc), ", but it cannot serve: ", cand->why_not);
    c.chosen = f;
    c.how = "TPL_GEMM";
    return c;
  }
  std::vector<std::size_t> serving;  // indices into list / c.candidates
  for (std::size_t i = 0; i < list.size(); ++i)
    if (c.candidates[i].why_not.empty() && list[i]->name != "reference") serving.push_back(i);
  if (serving.empty()) {
    if (GemmCandidate* ref = find("reference"); ref && ref->why_not.empty()) {
      c.chosen = "reference";
      c.how = "nothing faster serves";
      return c;
    }
    std::string reasons;
    for (const auto& cand : c.candidates) reasons += "; " + cand.name + ": " + cand.why_not;
    TPL_THROW(Unsupported, kWhere, "no CPU GEMM implementation serves ", dtypes(desc),
              " on this CPU (", cpu_isa_name(cpu_.effective()), ")", reasons);
  }
  if (serving.size() == 1) {
    c.chosen = list[serving.front()]->name;
    c.how = "only one serves";
    return c;
  }
  if (nesting_ > 0) {  // see nesting_: the same choice on every rank, without a collective
    c.chosen = list[serving.front()]->name;
    c.how = "inside another implementation: table order";
    return c;
  }
  const Key key{static_cast<int>(desc.act), static_cast<int>(desc.weight),
                static_cast<int>(desc.out), desc.n, desc.k};
  if (keep) {
    if (auto it = cache_.find(key); it != cache_.end()) {
      c.chosen = it->second;
      c.how = "measured earlier for this shape";
      return c;
    }
  }
  if (!options_.measure) {
    c.chosen = list[serving.front()]->name;
    c.how = "table order";
    return c;
  }
  // Time every serving implementation on this weight (or a random one of its shape).
  Tensor random_w;
  if (weight.empty()) {
    random_w = random_tensor(desc.weight, desc.n, desc.k, -127, 3);
    weight = random_w;
  }
  GemmCandidate* best = nullptr;
  std::unique_ptr<Gemm> best_gemm;
  for (std::size_t i : serving) {
    GemmCandidate* cand = &c.candidates[i];
    std::unique_ptr<Gemm> g;
    try {
      g = make_impl(*list[i], desc, weight, bias);
      cand->ms = time_ms(*g, m);
    } catch (const Unsupported& e) {
      cand->why_not = e.what();
      continue;
    } catch (const BackendError& e) {
      cand->why_not = e.what();
      continue;
    }
    if (!best || cand->ms < best->ms * kMargin) {
      best = cand;
      best_gemm = std::move(g);
    }
  }
  TPL_CHECK_T(best, Unsupported, kWhere, "every CPU GEMM implementation that should serve ",
              dtypes(desc), " failed to plan: ", c.candidates[serving.front()].why_not);
  c.chosen = best->name;
  std::ostringstream how;
  how << "measured at M=" << m;
  c.how = how.str();
  if (keep) {
    cache_[key] = c.chosen;
    *keep = std::move(best_gemm);
  }
  return c;
}

const CpuGemmImpl& CpuGemmChooser::impl_named(const std::string& name) const {
  const auto it =
      std::find_if(impls_.begin(), impls_.end(), [&](const Impl& i) { return i.name == name; });
  TPL_CHECK_T(it != impls_.end(), BackendError, kWhere, "no CPU GEMM implementation named '", name,
              "' in this build");
  return *it;
}

std::unique_ptr<Gemm> CpuGemmChooser::make(const GemmDesc& desc, TensorView weight, TensorView bias,
                                           std::string* chosen) {
  std::unique_ptr<Gemm> gemm;
  GemmChoice c = decide(desc, options_.m_hint, weight, bias, &gemm);
  if (agreement_ && nesting_ == 0) {
    const std::string agreed = agreement_(desc, c.chosen);
    if (agreed != c.chosen) {
      const auto it = std::find_if(impls_.begin(), impls_.end(),
                                   [&](const Impl& i) { return i.name == agreed; });
      const std::string why = it == impls_.end() ? "not in this build" : it->why_not(desc, cpu_);
      if (why.empty()) {
        c.how = "agreed across ranks; this rank chose " + c.chosen;
        c.chosen = agreed;
        gemm.reset();
      } else {
        // Heterogeneous ranks: each still runs an implementation checked against the reference.
        std::fprintf(stderr,
                     "tpl gemm: warning: the ranks chose %s for %s [n=%lld, k=%lld], which "
                     "cannot serve on this rank (%s); it keeps %s\n",
                     agreed.c_str(), dtypes(desc).c_str(), static_cast<long long>(desc.n),
                     static_cast<long long>(desc.k), why.c_str(), c.chosen.c_str());
      }
    }
  }
  const Impl& impl = impl_named(c.chosen);
  probe_once(impl, desc);
  if (!gemm) gemm = make_impl(impl, desc, weight, bias);
  if (options_.log) {
    std::ostringstream os;
    os << "tpl gemm: " << dtypes(desc) << " [n=" << desc.n << ", k=" << desc.k
       << "]: " << gemm->name() << " (" << c.how;
    const char* sep = ": ";
    for (const auto& cand : c.candidates) {
      if (cand.ms < 0) continue;
      os << sep << cand.name << " " << cand.ms << " ms";
      sep = ", ";
    }
    os << ")\n";
    std::fputs(os.str().c_str(), stderr);
  }
  if (chosen) *chosen = c.chosen;
  return gemm;
}

std::unique_ptr<Gemm> CpuGemmChooser::make_as(const std::string& name, const GemmDesc& desc,
                                              TensorView weight, TensorView bias) {
  const Impl& impl = impl_named(name);
  const std::string why = impl.why_not(desc, cpu_);
  TPL_CHECK_T(why.empty(), Unsupported, kWhere, "CPU GEMM implementation '", name,
              "' cannot serve ", dtypes(desc), ": ", why);
  probe_once(impl, desc);
  return make_impl(impl, desc, weight, bias);
}

std::unique_ptr<CpuGemmChooser> make_default_cpu_gemm_chooser() {
  return std::make_unique<CpuGemmChooser>(detect_cpu(),
                                          CpuGemmOptions::from_env(/*measure_default=*/false));
}

GemmChoice CpuGemmChooser::explain(const GemmDesc& desc, std::int64_t m) {
  return decide(desc, m, TensorView(), TensorView(), nullptr);
}

}  // namespace tpl
