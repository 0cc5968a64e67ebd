// Fuzz harness: a simulator cluster profile (tpl/cluster.h), as ClusterProfile::from_file reads
// it (parse, then from_json; the contract allows only ConfigError). After a successful parse the
// integer fields must be the file's integers, and what the simulator computes from the profile
// must be finite: every GEMM and collective time (within a node, across nodes, at an uneven
// group), every table of synthesize() (positive, x strictly ascending, one per collective and
// group asked for) and every validate() prediction.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "tpl/cluster.h"
#include "tpl/error.h"
#include "tpl/json_text.h"

namespace {

constexpr tpl::Collective kAll[] = {tpl::Collective::kAllReduce, tpl::Collective::kReduceScatter,
                                    tpl::Collective::kAllGather, tpl::Collective::kAllToAll,
                                    tpl::Collective::kBroadcast};

bool finite_nonneg(double v) {
  return std::isfinite(v) && v >= 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = tpl::fuzz::as_chars(data, size);
  nlohmann::json j;
  try {
    j = tpl::parse_json(text);  // as from_file parses
  } catch (const nlohmann::json::exception&) {
    return 0;  // from_file: ConfigError "not JSON"
  }
  tpl::ClusterProfile p;
  try {
    p = tpl::ClusterProfile::from_json(j, "fuzz-cluster.json");
  } catch (const tpl::ConfigError&) {
    return 0;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  try {
    FUZZ_CHECK(j.at("gpus_per_node").get<std::int64_t>() == p.gpus_per_node && p.gpus_per_node >= 1,
               "gpus_per_node differs from the file's integer");
    FUZZ_CHECK(!p.peak_tflops.empty(), "no GEMM rate");
    const int g = p.gpus_per_node;
    const std::vector<int> groups = {2, g, g + 1, 2 * g, 4 * g + 3};
    for (const auto& [dt, peak] : p.peak_tflops) {
      FUZZ_CHECK(std::isfinite(peak) && peak > 0, "peak_tflops.%s", dt.c_str());
      for (double m : {1.0, 4096.0, 65536.0}) {
        const double ms = p.gemm_ms(dt, m, 32768, 32768);
        FUZZ_CHECK(std::isfinite(ms) && ms > 0, "gemm_ms(%s, %g) = %g", dt.c_str(), m, ms);
      }
    }
    for (int group : groups)
      for (tpl::Collective c : kAll)
        for (double bytes : {1.0, 1024.0 * 1024 * 1024}) {
          const double ms = p.collective_ms(c, bytes, group);
          FUZZ_CHECK(finite_nonneg(ms), "collective_ms(%s, %g, %d) = %g", tpl::collective_name(c),
                     bytes, group, ms);
        }
    const tpl::MachineProfile mp = p.synthesize(groups);
    for (const auto& [dt, tabs] : mp.gemm)
      for (const auto& t : tabs)
        for (std::size_t i = 0; i < t.rows.size(); ++i)
          FUZZ_CHECK(std::isfinite(t.rows[i].ms) && t.rows[i].ms > 0 &&
                         (i == 0 || t.rows[i].x > t.rows[i - 1].x),
                     "synthesized %s table %lld: row %zu", dt.c_str(), static_cast<long long>(t.n),
                     i);
    for (int group : groups)
      for (tpl::Collective c : kAll) {
        if (group < 2) continue;
        const auto it = mp.collectives.find(tpl::MachineProfile::collective_key(c, group));
        FUZZ_CHECK(it != mp.collectives.end() && !it->second.empty(), "no %s table for %d ranks",
                   tpl::collective_name(c), group);
        for (std::size_t i = 0; i < it->second.size(); ++i)
          FUZZ_CHECK(std::isfinite(it->second[i].ms) && it->second[i].ms > 0 &&
                         (i == 0 || it->second[i].x > it->second[i - 1].x),
                     "synthesized %s/%d: point %zu", tpl::collective_name(c), group, i);
      }
    for (const tpl::CheckResult& r : tpl::validate(p))
      FUZZ_CHECK(std::isfinite(r.predicted) && r.predicted > 0 && std::isfinite(r.error()),
                 "validate: %s %s at %g predicted %g", r.source.c_str(), r.kind.c_str(), r.x,
                 r.predicted);
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, "a parsed cluster profile's accessors threw: %s", e.what());
  }
  return 0;
}
