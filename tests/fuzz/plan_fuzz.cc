// Fuzz harness: a plan JSON (tpl/plan.h), as Plan::from_file reads it (parse, then
// Plan::from_json; the contract allows only ConfigError). After a successful parse world, tp and
// dp must be the file's integers (no truncation), tp x dp = world, the buckets non-empty with
// ascending limits and -1 last, every bucket's strategy among the configs, every config on the
// plan's tp and dp, and to_json() must read back to the same plan.
#include <climits>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/plan.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = tpl::fuzz::as_chars(data, size);
  nlohmann::json j;
  try {
    j = tpl::parse_json(text);  // as from_file parses
  } catch (const nlohmann::json::exception&) {
    return 0;  // from_file: ConfigError "not valid JSON"
  }
  tpl::Plan p;
  try {
    p = tpl::Plan::from_json(j, "fuzz-plan.json");
  } catch (const tpl::ConfigError&) {
    return 0;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  try {
    FUZZ_CHECK(j.at("world").get<std::int64_t>() == p.world &&
                   j.at("tp").get<std::int64_t>() == p.tp && j.at("dp").get<std::int64_t>() == p.dp,
               "world/tp/dp differ from the file's integers");
    FUZZ_CHECK(
        p.world >= 1 && p.tp >= 1 && p.dp >= 1 && static_cast<std::int64_t>(p.tp) * p.dp == p.world,
        "tp x dp != world");
    FUZZ_CHECK(!p.buckets.empty(), "no buckets");
    std::int64_t prev = 0;
    for (std::size_t i = 0; i < p.buckets.size(); ++i) {
      const auto& b = p.buckets[i];
      if (i + 1 == p.buckets.size())
        FUZZ_CHECK(b.max_tokens == -1, "last bucket limit");
      else
        FUZZ_CHECK(b.max_tokens > prev, "bucket limits not ascending");
      prev = b.max_tokens;
      (void)p.config_for(b.max_tokens < 0 ? prev + 1 : b.max_tokens);  // throws if missing
    }
    for (const auto& c : p.configs)
      FUZZ_CHECK(c.config.layout.tp == p.tp && c.config.layout.dp == p.dp, "config layout");
    (void)p.bucket_for(0), (void)p.bucket_for(INT64_MAX), (void)p.config_for(-5);
    const nlohmann::json out = p.to_json();
    FUZZ_CHECK(tpl::Plan::from_json(out, "to_json").to_json() == out, "to_json does not read back");
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, "a parsed plan's accessors threw: %s", e.what());
  }
  return 0;
}
