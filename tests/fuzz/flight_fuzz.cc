// Fuzz harness: a flight recorder (tpl/watchdog.h) as `tplinear analyze` reads it
// (tpl::analyze_flight_dumps; the contract allows only ConfigError). The input is one recorder,
// analyzed alone and next to a fixed second recorder of another rank, so the merging paths run
// too. After a successful analysis the report must name the recorders and end in a newline.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/flight_analysis.h"

namespace {

// World rank 7, one completed and one started collective on a group of ranks 0 and 7.
const char* const kOther = R"({"rank": 7, "host": "h", "wall_t0": 100.0, "recorded": 2,
  "ring": 64, "groups": [{"key": 5, "name": "g", "world_ranks": [0, 7]}],
  "records": [{"seq": 1, "group_seq": 1, "group_key": 5, "op": "barrier", "group": "g",
               "bytes": 0, "state": "completed", "started_s": 0.5, "elapsed_s": 0.1},
              {"seq": 2, "group_seq": 2, "group_key": 5, "op": "all_reduce", "group": "g",
               "bytes": 64, "state": "started", "started_s": 0.7, "elapsed_s": 2}]})";

void analyze(const std::vector<tpl::FlightDump>& dumps) {
  std::string report;
  try {
    report = tpl::analyze_flight_dumps(dumps);
  } catch (const tpl::ConfigError&) {
    return;  // expected
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  FUZZ_CHECK(report.rfind("flight recorders of world rank", 0) == 0, "report starts with '%.40s'",
             report.c_str());
  FUZZ_CHECK(!report.empty() && report.back() == '\n', "report does not end in a newline");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(tpl::fuzz::as_chars(data, size));
  analyze({{"fuzz.json", text}});
  analyze({{"fuzz.json", text}, {"other.json", kOther}});
  return 0;
}
