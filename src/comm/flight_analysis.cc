#include "tpl/flight_analysis.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "tpl/error.h"
#include "tpl/json_text.h"

namespace tpl {
namespace {

struct Rec {
  std::uint64_t seq = 0, group_seq = 0, key = 0;
  std::string op, group;
  std::int64_t bytes = 0;
  bool completed = false;
  double wall = 0;  // start, seconds since the epoch
};

struct Dump {
  std::string source, host;
  int rank = 0;
  bool wrapped = false;  // more collectives recorded than the ring holds
  std::vector<Rec> recs;
  double oldest_wall = 0;
};

struct GroupInfo {
  std::string name;
  std::vector<int> ranks;
};

// The fields, typed strictly: a number out of an integer's range or of the wrong kind is
// "not a recorder", never a conversion with undefined behaviour.
[[noreturn]] void bad_field(const char* name, const std::string& source, const char* want) {
  TPL_THROW(ConfigError, (Where{source}), "not a tplinear flight recorder: field '", name, "' ",
            want);
}

const nlohmann::json& at(const nlohmann::json& j, const char* name, const std::string& source) {
  if (!j.is_object() || !j.contains(name)) bad_field(name, source, "is missing");
  return j[name];
}

std::uint64_t u64(const nlohmann::json& j, const char* name, const std::string& source) {
  const nlohmann::json& v = at(j, name, source);
  if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<std::int64_t>() < 0))
    bad_field(name, source, "must be an integer >= 0");
  return v.get<std::uint64_t>();
}

std::int64_t i64(const nlohmann::json& j, const char* name, const std::string& source) {
  std::int64_t x = 0;
  if (!json_int64(at(j, name, source), &x)) bad_field(name, source, "must be an integer");
  return x;
}

int rank_of(const nlohmann::json& v, const char* name, const std::string& source) {
  if (!v.is_number_integer() || (v.is_number_unsigned() && v.get<std::uint64_t>() > INT_MAX) ||
      (!v.is_number_unsigned() && (v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > INT_MAX)))
    bad_field(name, source, "must be a rank (an integer from 0)");
  return static_cast<int>(v.get<std::int64_t>());
}

double number(const nlohmann::json& j, const char* name, const std::string& source) {
  const nlohmann::json& v = at(j, name, source);
  if (!v.is_number()) bad_field(name, source, "must be a number");
  return v.get<double>();
}

std::string text(const nlohmann::json& j, const char* name, const std::string& source) {
  const nlohmann::json& v = at(j, name, source);
  if (!v.is_string()) bad_field(name, source, "must be a string");
  return v.get<std::string>();
}

const nlohmann::json& array(const nlohmann::json& j, const char* name, const std::string& source) {
  const nlohmann::json& v = at(j, name, source);
  if (!v.is_array()) bad_field(name, source, "must be an array");
  return v;
}

Dump parse_dump(const FlightDump& in, std::map<std::uint64_t, GroupInfo>& groups) {
  nlohmann::json j;
  try {
    j = parse_json(in.text);
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, (Where{in.source}), "not JSON: ", e.what());
  }
  TPL_CHECK_T(j.is_object(), ConfigError, (Where{in.source}),
              "not a tplinear flight recorder: not a JSON object");
  Dump d;
  const std::string& src = in.source;
  d.source = src;
  d.rank = rank_of(at(j, "rank", src), "rank", src);
  d.host = j.contains("host") ? text(j, "host", src) : "";
  const double t0 = number(j, "wall_t0", src);
  d.wrapped = u64(j, "recorded", src) > u64(j, "ring", src);
  for (const auto& g : array(j, "groups", src)) {
    const std::uint64_t key = u64(g, "key", src);
    GroupInfo info{text(g, "name", src), {}};
    for (const auto& r : array(g, "world_ranks", src))
      info.ranks.push_back(rank_of(r, "world_ranks", src));
    groups.try_emplace(key, std::move(info));
  }
  d.oldest_wall = std::numeric_limits<double>::infinity();
  for (const auto& r : array(j, "records", src)) {
    Rec x;
    x.seq = u64(r, "seq", src);
    x.group_seq = u64(r, "group_seq", src);
    x.key = u64(r, "group_key", src);
    x.op = text(r, "op", src);
    x.group = text(r, "group", src);
    x.bytes = i64(r, "bytes", src);
    const std::string state = text(r, "state", src);
    TPL_CHECK_T(state == "completed" || state == "started", ConfigError, (Where{src}),
                "not a tplinear flight recorder: state '", state,
                "' (completed or started expected)");
    x.completed = state == "completed";
    x.wall = t0 + number(r, "started_s", src);
    d.oldest_wall = std::min(d.oldest_wall, x.wall);
    if (x.key != 0) d.recs.push_back(std::move(x));  // unregistered (finalize): not matched
  }
  return d;
}

std::string ranks_text(const std::vector<int>& r) {
  std::string s = r.size() == 1 ? "rank " : "ranks ";
  for (std::size_t i = 0; i < r.size(); ++i) s += (i ? ", " : "") + std::to_string(r[i]);
  return s;
}

const Rec* find(const Dump& d, std::uint64_t key, std::uint64_t gseq) {
  for (const Rec& r : d.recs)
    if (r.key == key && r.group_seq == gseq) return &r;
  return nullptr;
}

const Rec* last_on(const Dump& d, std::uint64_t key) {
  const Rec* best = nullptr;
  for (const Rec& r : d.recs)
    if (r.key == key && (!best || r.group_seq > best->group_seq)) best = &r;
  return best;
}

const Rec* last_of(const Dump& d) {
  const Rec* best = nullptr;
  for (const Rec& r : d.recs)
    if (!best || r.seq > best->seq) best = &r;
  return best;
}

std::string state_of(const Rec& r) {
  return r.completed ? "completed" : "started, not finished";
}

}  // namespace

std::string analyze_flight_dumps(const std::vector<FlightDump>& inputs) {
  TPL_CHECK_T(!inputs.empty(), ConfigError, (Where{"tplinear analyze"}),
              "no flight recorders given");
  std::map<std::uint64_t, GroupInfo> groups;
  std::map<int, Dump> dumps;
  for (const FlightDump& in : inputs) {
    Dump d = parse_dump(in, groups);
    const int rank = d.rank;
    const auto [it, fresh] = dumps.try_emplace(rank, std::move(d));
    TPL_CHECK_T(fresh, ConfigError, (Where{in.source}), "a second flight recorder of world rank ",
                rank, " (the first is ", it->second.source, ")");
  }
  std::ostringstream os;
  std::vector<int> have;
  std::set<std::string> hosts;
  for (const auto& [rank, d] : dumps) {
    have.push_back(rank);
    if (!d.host.empty()) hosts.insert(d.host);
  }
  os << "flight recorders of world " << ranks_text(have);
  if (!hosts.empty()) {
    os << " (host" << (hosts.size() > 1 ? "s" : "");
    for (auto h = hosts.begin(); h != hosts.end(); ++h)
      os << (h == hosts.begin() ? " " : ", ") << *h;
    os << ")";
  }
  os << "\n";

  // Every collective any rank recorded, earliest start first.
  struct Coll {
    std::uint64_t key, gseq;
    double wall;
  };
  std::map<std::pair<std::uint64_t, std::uint64_t>, double> starts;
  for (const auto& [rank, d] : dumps)
    for (const Rec& r : d.recs) {
      auto [it, fresh] = starts.try_emplace({r.key, r.group_seq}, r.wall);
      if (!fresh) it->second = std::min(it->second, r.wall);
    }
  std::vector<Coll> colls;
  for (const auto& [k, wall] : starts) colls.push_back({k.first, k.second, wall});
  std::sort(colls.begin(), colls.end(), [](const Coll& a, const Coll& b) {
    return a.wall != b.wall ? a.wall < b.wall : a.key != b.key ? a.key < b.key : a.gseq < b.gseq;
  });

  int troubled = 0;
  std::string first;
  for (const Coll& c : colls) {
    const auto g = groups.find(c.key);
    std::vector<int> members;
    if (g != groups.end()) {
      members = g->second.ranks;
    } else {  // a group no recorder lists: its members are at least the ranks that recorded it
      for (const auto& [rank, d] : dumps)
        if (find(d, c.key, c.gseq)) members.push_back(rank);
    }
    std::sort(members.begin(), members.end());
    members.erase(std::unique(members.begin(), members.end()), members.end());
    std::vector<int> completed, started, no_dump, unknown;
    std::vector<std::string> never;
    std::vector<int> never_ranks;
    std::map<std::string, std::vector<int>> kinds;  // "all_reduce (4096 bytes)" -> ranks
    const Rec* any = nullptr;
    for (const int m : members) {
      const auto d = dumps.find(m);
      if (d == dumps.end()) {
        no_dump.push_back(m);
        continue;
      }
      if (const Rec* r = find(d->second, c.key, c.gseq)) {
        any = any ? any : r;
        (r->completed ? completed : started).push_back(m);
        kinds[r->op + " (" + std::to_string(r->bytes) + " bytes)"].push_back(m);
        continue;
      }
      const Rec* on = last_on(d->second, c.key);
      if (on && on->group_seq > c.gseq) {
        completed.push_back(m);  // it went past this one; the record aged out of its ring
        continue;
      }
      if (d->second.wrapped && c.wall < d->second.oldest_wall) {
        unknown.push_back(m);
        continue;
      }
      std::string s = std::to_string(m) + " (";
      s += on ? "its last on this group: #" + std::to_string(on->group_seq) + " " + on->op + ", " +
                    state_of(*on)
              : "nothing on this group";
      if (const Rec* l = last_of(d->second); l && l != on)
        s += "; its last collective: " + l->op + " #" + std::to_string(l->group_seq) + " on " +
             l->group + ", " + state_of(*l);
      never.push_back(s + ")");
      never_ranks.push_back(m);
    }
    const bool trouble = !started.empty() || !never.empty() || !no_dump.empty() ||
                         !unknown.empty() || kinds.size() > 1;
    if (!trouble) continue;
    if (++troubled > 1) continue;
    std::ostringstream f;
    const std::string name = g != groups.end() ? g->second.name : any ? any->group : "a group";
    f << "first collective the ranks disagree on: ";
    if (kinds.size() == 1)
      f << any->op << " #" << c.gseq << " on " << name << ", " << any->bytes << " bytes\n";
    else
      f << "#" << c.gseq << " on " << name << "\n";
    if (kinds.size() > 1) {
      f << "  the ranks that joined it disagree on what it is:";
      bool firstk = true;
      for (const auto& [kind, rs] : kinds) {
        f << (firstk ? " " : "; ") << kind << " on " << ranks_text(rs);
        firstk = false;
      }
      f << "\n";
    }
    if (!completed.empty()) f << "  completed: " << ranks_text(completed) << "\n";
    if (!started.empty()) f << "  joined, not finished: " << ranks_text(started) << "\n";
    if (!never.empty()) {
      f << "  never joined: " << (never.size() == 1 ? "rank " : "ranks ");
      for (std::size_t i = 0; i < never.size(); ++i) f << (i ? ", " : "") << never[i];
      f << "\n";
    }
    if (!unknown.empty())
      f << "  not known (their records no longer reach back to it): " << ranks_text(unknown)
        << "\n";
    if (!no_dump.empty())
      f << "  no flight recorder (stopped, killed, or on a host that was not asked): "
        << ranks_text(no_dump) << "\n";
    first = f.str();
  }
  if (troubled == 0) {
    os << "no disagreement: every member completed every one of the " << colls.size()
       << " collectives recorded\n";
  } else {
    os << first;
    if (troubled > 1)
      os << "(" << troubled - 1 << " later collective" << (troubled > 2 ? "s" : "")
         << " did not complete on every member either)\n";
  }
  return os.str();
}

}  // namespace tpl
