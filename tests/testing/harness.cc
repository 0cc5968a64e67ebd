#include "harness.h"

#include <cmath>
#include <sstream>

#include "tpl/cpu_gemm.h"

namespace tpl::testing {

std::unique_ptr<Gemm> make_impl_gemm(const std::string& impl, const GemmDesc& desc,
                                     TensorView weight, TensorView bias) {
  CpuGemmOptions o;
  o.measure = false;
  o.force = {impl};
  CpuGemmChooser chooser(detect_cpu(), o);
  return chooser.make(desc, weight, bias);
}

std::vector<std::string> listed_impls(const GemmDesc& desc) {
  std::vector<std::string> v;
  for (const GemmCandidate& c : CpuGemmChooser(detect_cpu(), CpuGemmOptions{}).candidates(desc))
    if (c.name != "reference") v.push_back(c.name);
  return v;
}

std::string why_impl_cannot_serve(const std::string& impl, const GemmDesc& desc) {
  CpuGemmOptions o;
  o.measure = false;
  CpuGemmChooser chooser(detect_cpu(), o);
  for (const GemmCandidate& c : chooser.candidates(desc))
    if (c.name == impl) return c.why_not;
  return impl + " is not listed for this dtype combination";
}

std::string compare(const TensorView& actual, const TensorView& expected, double atol, double rtol,
                    const std::string& label) {
  std::ostringstream os;
  if (actual.rows() != expected.rows() || actual.cols() != expected.cols()) {
    os << label << ": shape " << actual.describe() << " != expected " << expected.describe();
    return os.str();
  }
  std::int64_t bad = 0, first_r = -1, first_c = -1;
  double first_e = 0, first_a = 0, max_abs = 0;
  for (std::int64_t r = 0; r < actual.rows(); ++r) {
    for (std::int64_t c = 0; c < actual.cols(); ++c) {
      const double a = get_f32(actual, r, c);
      const double e = get_f32(expected, r, c);
      const double err = std::fabs(a - e);
      const bool ok = (a == e) || err <= atol + rtol * std::fabs(e);
      if (!std::isfinite(err) && a != e) max_abs = INFINITY;
      if (err > max_abs) max_abs = err;
      if (!ok) {
        if (bad++ == 0) first_r = r, first_c = c, first_e = e, first_a = a;
      }
    }
  }
  if (bad == 0) return {};
  os.precision(9);
  os << label << ": " << bad << " of " << actual.numel() << " elements differ (atol " << atol
     << ", rtol " << rtol << "); first at index (" << first_r << ", " << first_c << "): expected "
     << first_e << ", actual " << first_a << "; max abs error " << max_abs;
  return os.str();
}

std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& s) {
  const int n = comm.size();
  Tensor len(DType::kI32, 1, 1), lens(DType::kI32, n, 1);
  len.ptr<std::int32_t>()[0] = static_cast<std::int32_t>(s.size());
  comm.all_gather(len, lens, 0);
  std::int32_t max_len = 1;
  for (int i = 0; i < n; ++i) max_len = std::max(max_len, lens.ptr<std::int32_t>()[i]);
  Tensor mine(DType::kI8, 1, max_len), all(DType::kI8, n, max_len);
  std::copy(s.begin(), s.end(), mine.ptr<char>());
  comm.all_gather(mine, all, 0);
  std::vector<std::string> out(n);
  for (int i = 0; i < n; ++i)
    out[i].assign(all.ptr<char>() + static_cast<std::size_t>(i) * max_len,
                  lens.ptr<std::int32_t>()[i]);
  return out;
}

void expect_agreed(Communicator& comm, const std::string& local_failure) {
  const auto msgs = all_gather_strings(comm, local_failure);
  std::ostringstream os;
  bool failed = false;
  for (std::size_t r = 0; r < msgs.size(); ++r) {
    if (msgs[r].empty()) continue;
    failed = true;
    os << "[rank " << r << "] " << msgs[r] << "\n";
  }
  if (failed) ADD_FAILURE() << os.str();
}

Tensor random_ints(std::int64_t rows, std::int64_t cols, int range, std::uint64_t seed,
                   DType dtype) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int> dist(-range, range);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = static_cast<float>(dist(gen));
  return Tensor::from_f32(v, rows, cols, dtype);
}

Tensor random_normal(std::int64_t rows, std::int64_t cols, float stddev, std::uint64_t seed,
                     DType dtype) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return Tensor::from_f32(v, rows, cols, dtype);
}

}  // namespace tpl::testing
