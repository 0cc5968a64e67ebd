// Fuzz harness: the tplinear config JSON (docs/config.md), as Config::from_file reads it (parse,
// then Config::from_json; the contract allows only ConfigError). After a successful parse the
// layout sizes must be >= 1 with PP x DP x TP an int (computed here without overflow), the
// enums in range, the group sizes consistent, and to_json() must read back to the same config.
#include <climits>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"
#include "tpl/config.h"
#include "tpl/error.h"
#include "tpl/json_text.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = tpl::fuzz::as_chars(data, size);
  nlohmann::json j;
  try {
    j = tpl::parse_json(text);  // as from_file parses
  } catch (const nlohmann::json::exception&) {
    return 0;  // from_file: ConfigError "not valid JSON"
  }
  tpl::Config c;
  try {
    c = tpl::Config::from_json(j);
  } catch (const tpl::ConfigError&) {
    return 0;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  try {
    const auto& l = c.layout;
    FUZZ_CHECK(l.pp >= 1 && l.dp >= 1 && l.tp >= 1, "layout size < 1");
    const __int128 world = static_cast<__int128>(l.pp) * l.dp * l.tp;
    FUZZ_CHECK(world <= INT_MAX, "PP x DP x TP overflows an int");
    FUZZ_CHECK(l.world_size() == world, "world_size()");
    FUZZ_CHECK(c.deployment == tpl::Deployment::kMixed ||
                   c.deployment == tpl::Deployment::kPrefill ||
                   c.deployment == tpl::Deployment::kDecode,
               "deployment out of range");
    FUZZ_CHECK(c.overlap == tpl::Overlap::kAuto || c.overlap == tpl::Overlap::kOn ||
                   c.overlap == tpl::Overlap::kOff,
               "overlap out of range");
    FUZZ_CHECK(c.flashcomm1_threshold >= 0 && c.fused_chunks >= 0 && c.mlp_tp >= 0 &&
                   c.oproj_tp >= 0 && c.flashcomm2_p >= 0,
               "negative size");
    FUZZ_CHECK(c.mlp_tp == 0 || l.dp % c.mlp_tp == 0, "mlp_tp does not divide dp");
    FUZZ_CHECK(c.oproj_tp == 0 || l.dp % c.oproj_tp == 0, "oproj_tp does not divide dp");
    FUZZ_CHECK(c.flashcomm2_p == 0 || (l.tp % c.flashcomm2_p == 0 && c.flashcomm2_p < l.tp),
               "flashcomm2_p does not divide tp");
    const nlohmann::json out = c.to_json();
    FUZZ_CHECK(tpl::Config::from_json(out).to_json() == out, "to_json does not read back");
    const tpl::Features f = tpl::Features::derive(c, tpl::ModelInfo{});
    (void)tpl::group_sizes(c, f);
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, "a parsed config's round trip threw: %s", e.what());
  }
  return 0;
}
