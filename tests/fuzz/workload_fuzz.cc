// Fuzz harness: the workload string of `tplinear plan --workload` and calibrate (parse_workload,
// tpl/plan.h; the contract allows only InvalidArgument). After a successful parse the token
// counts must be ascending, distinct and in [1, 2^20], every weight positive and finite, and the
// weights must sum to 1.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(tpl::fuzz::as_chars(data, size));
  std::vector<std::pair<std::int64_t, double>> w;
  try {
    w = tpl::parse_workload(text);
  } catch (const tpl::InvalidArgument&) {
    return 0;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  FUZZ_CHECK(!w.empty(), "an empty workload parsed");
  double sum = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    FUZZ_CHECK(w[i].first >= 1 && w[i].first <= (1 << 20), "tokens %lld out of range",
               static_cast<long long>(w[i].first));
    FUZZ_CHECK(i == 0 || w[i].first > w[i - 1].first, "tokens not ascending and distinct");
    FUZZ_CHECK(std::isfinite(w[i].second) && w[i].second > 0, "weight %g of %lld tokens",
               w[i].second, static_cast<long long>(w[i].first));
    sum += w[i].second;
  }
  FUZZ_CHECK(std::fabs(sum - 1) <= 1e-9, "weights sum to %.17g", sum);
  return 0;
}
