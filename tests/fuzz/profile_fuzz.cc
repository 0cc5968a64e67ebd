// Fuzz harness: a machine profile (tpl/profile.h), as MachineProfile::from_file reads it (parse,
// then from_json; the contract allows only ConfigError). After a successful parse the machine's
// cores and ranks and every table's k and n must be the file's integers (no truncation, no
// float-to-int overflow), every point positive and finite with x strictly ascending, the
// reference shapes ascending by n*k, every collective key one the cost model can look up
// (collective_key of a known collective and a group size), every layer table found by
// layer_table, and to_json() must read back to the same profile.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/profile.h"

namespace {

void check_points(const std::vector<tpl::ProfilePoint>& pts, const std::string& what) {
  FUZZ_CHECK(!pts.empty(), "%s: no points", what.c_str());
  for (std::size_t i = 0; i < pts.size(); ++i) {
    FUZZ_CHECK(std::isfinite(pts[i].x) && std::isfinite(pts[i].ms) && pts[i].x > 0 && pts[i].ms > 0,
               "%s[%zu]: not positive and finite", what.c_str(), i);
    FUZZ_CHECK(i == 0 || pts[i].x > pts[i - 1].x, "%s[%zu]: x not ascending", what.c_str(), i);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = tpl::fuzz::as_chars(data, size);
  nlohmann::json j;
  try {
    j = tpl::parse_json(text);  // as from_file parses
  } catch (const nlohmann::json::exception&) {
    return 0;  // from_file: ConfigError "not valid JSON"
  }
  tpl::MachineProfile p;
  try {
    p = tpl::MachineProfile::from_json(j, "fuzz-profile.json");
  } catch (const tpl::ConfigError&) {
    return 0;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  try {
    const auto& m = j.at("machine");
    FUZZ_CHECK(m.at("cores").get<std::int64_t>() == p.machine.cores && p.machine.cores >= 1 &&
                   m.at("ranks").get<std::int64_t>() == p.machine.ranks && p.machine.ranks >= 1,
               "cores/ranks differ from the file's integers");
    FUZZ_CHECK(!p.gemm.empty(), "no reference GEMM tables");
    for (const auto* tables : {&p.gemm, &p.layer_gemm}) {
      const bool reference = tables == &p.gemm;
      for (const auto& [key, tabs] : *tables) {
        FUZZ_CHECK(key == "f32" || key == "bf16" || key == "int8" || key == "w8a8", "GEMM key '%s'",
                   key.c_str());
        const auto& file_tabs = j.at(reference ? "gemm" : "layer_gemm").at(key);
        FUZZ_CHECK(file_tabs.size() == tabs.size(), "%s: tables lost", key.c_str());
        for (std::size_t i = 0; i < tabs.size(); ++i) {
          const auto& t = tabs[i];
          FUZZ_CHECK(t.k >= 1 && t.n >= 1 && file_tabs[i].at("k").get<std::int64_t>() == t.k &&
                         file_tabs[i].at("n").get<std::int64_t>() == t.n,
                     "%s[%zu]: k/n differ from the file's integers", key.c_str(), i);
          check_points(t.rows, key + " rows");
          if (reference)
            FUZZ_CHECK(i == 0 || double(t.n) * t.k > double(tabs[i - 1].n) * tabs[i - 1].k,
                       "%s[%zu]: reference shapes not ascending", key.c_str(), i);
          else
            FUZZ_CHECK(p.layer_table(key, t.n, t.k) == &t, "%s[%zu]: layer_table misses it",
                       key.c_str(), i);
        }
      }
    }
    for (const auto& [key, pts] : p.collectives) {
      bool found = false;
      for (tpl::Collective c :
           {tpl::Collective::kAllReduce, tpl::Collective::kReduceScatter,
            tpl::Collective::kAllGather, tpl::Collective::kAllToAll, tpl::Collective::kBroadcast}) {
        const std::string prefix = std::string(tpl::collective_name(c)) + "/";
        if (key.rfind(prefix, 0) == 0)
          found =
              tpl::MachineProfile::collective_key(c, std::stoi(key.substr(prefix.size()))) == key;
      }
      FUZZ_CHECK(found, "collective key '%s' is not one collective_key makes", key.c_str());
      check_points(pts, key);
    }
    for (const auto& [key, pts] : p.fused) check_points(pts, key);
    FUZZ_CHECK(std::isfinite(p.copy_gbps) && p.copy_gbps > 0, "copy_gbps");
    (void)p.mismatches(p.machine);
    const nlohmann::json out = p.to_json();
    FUZZ_CHECK(tpl::MachineProfile::from_json(out, "to_json").to_json() == out,
               "to_json does not read back");
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, "a parsed profile's accessors threw: %s", e.what());
  }
  return 0;
}
