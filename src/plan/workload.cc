// The workload string of `tplinear plan --workload` and calibrate (tpl/plan.h): apart from the
// planner, so that the fuzz harness tests/fuzz/workload_fuzz.cc links it alone.
#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tpl/error.h"
#include "tpl/plan.h"

namespace tpl {

namespace {
const Where kWhere{"planner"};
}  // namespace

std::vector<std::pair<std::int64_t, double>> parse_workload(const std::string& s) {
  std::vector<std::pair<std::int64_t, double>> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto colon = item.find(':');
    const std::string t = item.substr(0, colon);
    const std::string w = colon == std::string::npos ? "1" : item.substr(colon + 1);
    long long tokens = 0;
    double weight = 0;
    std::size_t used_t = 0, used_w = 0;
    try {
      tokens = std::stoll(t, &used_t);
      weight = std::stod(w, &used_w);
    } catch (const std::exception&) {
      used_t = used_w = 0;
    }
    if (used_t != t.size() || used_w != w.size() || tokens < 1 || tokens > (1 << 20) ||
        !(weight > 0) || !std::isfinite(weight))
      TPL_THROW(InvalidArgument, kWhere, "workload item '", item,
                "' is not TOKENS or TOKENS:WEIGHT (tokens in [1, 1048576], weight > 0)");
    if (std::any_of(v.begin(), v.end(), [&](const auto& p) { return p.first == tokens; }))
      TPL_THROW(InvalidArgument, kWhere, "workload lists ", tokens, " tokens twice");
    v.emplace_back(tokens, weight);
  }
  if (v.empty()) TPL_THROW(InvalidArgument, kWhere, "the workload needs at least one token count");
  std::sort(v.begin(), v.end());
  // Relative to the largest first: finite weights can still sum past DBL_MAX (1e308,1e308), and
  // weight / inf would be 0.
  double top = 0, sum = 0;
  for (const auto& p : v) top = std::max(top, p.second);
  for (auto& p : v) {
    p.second /= top;
    // 1e-300 beside 1e30 underflowed to a weight of 0 (libFuzzer found it); a share below
    // 1e-12 of the largest weighs nothing in a plan anyway.
    if (!(p.second >= 1e-12))
      TPL_THROW(InvalidArgument, kWhere, "workload weight of ", p.first,
                " tokens is below 1e-12 of the largest weight");
    sum += p.second;
  }
  for (auto& p : v) p.second /= sum;
  return v;
}

}  // namespace tpl
