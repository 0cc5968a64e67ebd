// `tplinear analyze`: merges the flight recorders that ranks wrote when a deadline expired
// (tpl/watchdog.h, TPL_DUMP_DIR) and names the first collective the ranks disagree on, as
// c10d's desync report does: which members completed it, which joined it and did not finish,
// which never joined it (with where they were instead), which wrote no recorder, and whether
// the ranks that joined it agree on what it is (docs/errors.md).
//
// A collective is (group key, number on that group): the key is the same on every member
// (Watchdog::register_group). "First" is by wall-clock start time (each dump carries its
// watchdog's start on the system clock), so it reads across ranks of one host exactly and
// across hosts as well as their clocks agree. A rank whose ring of records has wrapped and
// whose oldest record is newer than the collective cannot say whether it joined: "not known".
#pragma once

#include <string>
#include <vector>

namespace tpl {

struct FlightDump {
  std::string source;  // the file it came from, for messages
  std::string text;    // its JSON
};

// The report, several lines ending in '\n'. ConfigError for a dump that is not a flight
// recorder (naming the file and what is wrong), or two dumps of the same rank.
std::string analyze_flight_dumps(const std::vector<FlightDump>& dumps);

}  // namespace tpl
