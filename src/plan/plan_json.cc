// Plan's JSON form and its lookups (tpl/plan.h): apart from the planner, so that the parser
// builds with the config alone (the fuzz harness tests/fuzz/plan_fuzz.cc links only these).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/plan.h"

namespace tpl {

namespace {
const Where kWhere{"planner"};
}  // namespace

const PlanBucket& Plan::bucket_for(std::int64_t tokens) const {
  TPL_CHECK(!buckets.empty(), kWhere, "the plan has no buckets");
  for (const auto& b : buckets)
    if (b.max_tokens < 0 || tokens <= b.max_tokens) return b;
  return buckets.back();
}

const Config& Plan::config_for(std::int64_t tokens) const {
  const std::string& s = bucket_for(tokens).strategy;
  for (const auto& c : configs)
    if (c.name == s) return c.config;
  TPL_THROW(ConfigError, kWhere, "the plan has no config for strategy '", s, "'");
}

nlohmann::json Plan::to_json() const {
  nlohmann::json j{{"version", version},
                   {"model", model},
                   {"world", world},
                   {"tp", tp},
                   {"dp", dp},
                   {"dtype", dtype},
                   {"w8a8", w8a8},
                   {"layout", layout},
                   {"weight_bytes", weight_bytes},
                   {"buckets", nlohmann::json::array()},
                   {"configs", nlohmann::json::object()},
                   {"machine",
                    {{"cpu", machine.cpu},
                     {"isa", machine.isa},
                     {"cores", machine.cores},
                     {"mpi", machine.mpi},
                     {"ranks", machine.ranks}}}};
  for (const auto& b : buckets)
    j["buckets"].push_back({{"tokens", b.tokens},
                            {"max_tokens", b.max_tokens},
                            {"weight", b.weight},
                            {"strategy", b.strategy},
                            {"predicted_ms", b.predicted_ms},
                            {"runner_up", b.runner_up},
                            {"runner_up_ms", b.runner_up_ms},
                            {"why", b.why}});
  for (const auto& c : configs) j["configs"][c.name] = c.config.to_json();
  if (!comms.empty()) {
    j["comms"] = nlohmann::json::object();
    for (const auto& [role, kind] : comms) j["comms"][role] = comm_kind_name(kind);
    j["comms_why"] = comms_why;
  }
  return j;
}

Plan Plan::from_json(const nlohmann::json& j, const std::string& source) {
  auto fail = [&](const std::string& field, const std::string& what) {
    TPL_THROW(ConfigError, Where{"plan"}, source, ": field '", field, "' ", what);
  };
  auto get = [&](const nlohmann::json& o, const std::string& k,
                 const std::string& path) -> const nlohmann::json& {
    if (!o.is_object() || !o.contains(k)) fail(path.empty() ? k : path + "." + k, "is missing");
    return o.at(k);
  };
  auto integer = [&](const nlohmann::json& v, const std::string& path) {
    std::int64_t x = 0;
    if (!json_int64(v, &x)) fail(path, "must be an integer");
    return x;
  };
  // world, tp and dp: ints, so never truncated, and tp x dp computed without overflow.
  auto small = [&](const nlohmann::json& v, const std::string& path) {
    const std::int64_t x = integer(v, path);
    if (x < 1 || x > INT_MAX) fail(path, "must be an integer from 1 to " + std::to_string(INT_MAX));
    return static_cast<int>(x);
  };
  auto string = [&](const nlohmann::json& v, const std::string& path) {
    if (!v.is_string()) fail(path, "must be a string");
    return v.get<std::string>();
  };
  if (!j.is_object()) fail("(top level)", "must be an object");
  Plan p;
  if (integer(get(j, "version", ""), "version") != 1) fail("version", "must be 1");
  p.model = string(get(j, "model", ""), "model");
  p.world = small(get(j, "world", ""), "world");
  p.tp = small(get(j, "tp", ""), "tp");
  p.dp = small(get(j, "dp", ""), "dp");
  if (std::int64_t{p.tp} * p.dp != p.world) fail("tp", "times dp must equal world (all >= 1)");
  p.dtype = string(get(j, "dtype", ""), "dtype");
  if (!get(j, "w8a8", "").is_boolean()) fail("w8a8", "must be a boolean");
  p.w8a8 = j.at("w8a8").get<bool>();
  p.layout = string(get(j, "layout", ""), "layout");
  if (j.contains("comms")) {  // optional: plans of a profile with one communicator lack it
    const auto& c = j.at("comms");
    if (!c.is_object()) fail("comms", "must be an object of group roles");
    for (const auto& [role, kind] : c.items()) {
      if (!is_group_role(role))
        fail("comms." + role,
             "is not a process group (tp, mlp_tp, oproj_tp, fc2_odp, fc2_otp, shard_weight)");
      const std::string k = string(kind, "comms." + role);
      if (k != "mpi" && k != "shm") fail("comms." + role, "must be mpi or shm");
      p.comms[role] = parse_comm_kind(k, "plan");
    }
    if (j.contains("comms_why")) {
      const auto& w = j.at("comms_why");
      if (!w.is_array()) fail("comms_why", "must be an array of strings");
      for (std::size_t i = 0; i < w.size(); ++i)
        p.comms_why.push_back(string(w[i], "comms_why[" + std::to_string(i) + "]"));
    }
  }
  if (j.contains("weight_bytes")) {  // optional: plans written before the memory cap lack it
    if (!j.at("weight_bytes").is_number() || j.at("weight_bytes").get<double>() < 0)
      fail("weight_bytes", "must be a number >= 0");
    p.weight_bytes = j.at("weight_bytes").get<double>();
  }
  const auto& cfgs = get(j, "configs", "");
  if (!cfgs.is_object()) fail("configs", "must be an object of strategy configs");
  for (const auto& [name, cj] : cfgs.items()) {
    try {
      p.configs.push_back({name, Config::from_json(cj)});
    } catch (const ConfigError& e) {
      fail("configs." + name, std::string("is not a valid config: ") + e.what());
    }
    const Config& c = p.configs.back().config;
    if (c.layout.tp != p.tp || c.layout.dp != p.dp)
      fail("configs." + name, "has a layout other than the plan's tp and dp");
  }
  const auto& bs = get(j, "buckets", "");
  if (!bs.is_array() || bs.empty()) fail("buckets", "must be a non-empty array");
  std::int64_t prev = 0;
  for (std::size_t i = 0; i < bs.size(); ++i) {
    const std::string path = "buckets[" + std::to_string(i) + "]";
    PlanBucket b;
    b.tokens = integer(get(bs[i], "tokens", path), path + ".tokens");
    b.max_tokens = integer(get(bs[i], "max_tokens", path), path + ".max_tokens");
    b.strategy = string(get(bs[i], "strategy", path), path + ".strategy");
    if (bs[i].contains("predicted_ms") && bs[i]["predicted_ms"].is_number())
      b.predicted_ms = bs[i]["predicted_ms"].get<double>();
    if (bs[i].contains("runner_up") && bs[i]["runner_up"].is_string())
      b.runner_up = bs[i]["runner_up"].get<std::string>();
    if (bs[i].contains("runner_up_ms") && bs[i]["runner_up_ms"].is_number())
      b.runner_up_ms = bs[i]["runner_up_ms"].get<double>();
    if (bs[i].contains("weight") && bs[i]["weight"].is_number())
      b.weight = bs[i]["weight"].get<double>();
    if (bs[i].contains("why") && bs[i]["why"].is_string()) b.why = bs[i]["why"].get<std::string>();
    const bool last = i + 1 == bs.size();
    if (last ? b.max_tokens != -1 : b.max_tokens <= prev)
      fail(path + ".max_tokens",
           last ? "must be -1 (no limit) in the last bucket" : "must be ascending and positive");
    if (std::none_of(p.configs.begin(), p.configs.end(),
                     [&](const PlanCandidate& c) { return c.name == b.strategy; }))
      fail(path + ".strategy", "names '" + b.strategy + "', which is not in configs");
    prev = b.max_tokens;
    p.buckets.push_back(b);
  }
  if (j.contains("machine") && j["machine"].is_object()) {
    const auto& m = j["machine"];
    auto str = [&](const char* k, std::string& v) {
      if (m.contains(k) && m[k].is_string()) v = m[k].get<std::string>();
    };
    auto num = [&](const char* k, int& v) {
      if (m.contains(k) && m[k].is_number_integer()) v = m[k].get<int>();
    };
    str("cpu", p.machine.cpu), str("isa", p.machine.isa), str("mpi", p.machine.mpi);
    num("cores", p.machine.cores), num("ranks", p.machine.ranks);
  }
  return p;
}

Plan Plan::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, Where{"plan"}, "cannot open plan '", path, "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) TPL_THROW(IoError, Where{"plan"}, "cannot read plan '", path, "'");
  nlohmann::json j;
  try {
    j = parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, Where{"plan"}, path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

}  // namespace tpl
