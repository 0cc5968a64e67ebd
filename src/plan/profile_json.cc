// The machine profile's JSON form (tpl/profile.h): parse, validate, write. Apart from the
// machine queries (profile.cc), so the fuzz build (tests/fuzz) links the parser alone.
#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "tpl/error.h"
#include "tpl/json_text.h"
#include "tpl/profile.h"

namespace tpl {

const char* collective_name(Collective c) {
  switch (c) {
    case Collective::kAllReduce:
      return "all_reduce";
    case Collective::kReduceScatter:
      return "reduce_scatter";
    case Collective::kAllGather:
      return "all_gather";
    case Collective::kAllToAll:
      return "all_to_all";
    case Collective::kBroadcast:
      return "broadcast";
  }
  return "?";
}

namespace {

constexpr std::int64_t kMaxDim = std::int64_t{1} << 40;  // a GEMM dimension, far past any layer
constexpr int kMaxGroup = 1 << 20;                       // a collective's group size

// Field access with errors that name the file and the field's path.
struct Reader {
  const std::string& source;
  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    TPL_THROW(ConfigError, Where{"profile"}, source, ": field '", field, "' ", what);
  }
  const nlohmann::json& at(const nlohmann::json& j, const std::string& key,
                           const std::string& path) const {
    if (!j.is_object()) fail(path, "must be an object");
    if (!j.contains(key)) fail(path.empty() ? key : path + "." + key, "is missing");
    return j.at(key);
  }
  double number(const nlohmann::json& j, const std::string& path, bool positive) const {
    if (!j.is_number()) fail(path, "must be a number");
    const double v = j.get<double>();
    if (!std::isfinite(v) || (positive ? v <= 0 : v < 0))
      fail(path, positive ? "must be a positive number" : "must be a non-negative number");
    return v;
  }
  // An integer from `lo` to `hi`, of JSON's integer kind: 2.5 or 1e300 is refused rather than
  // truncated (a float-to-int conversion out of range is undefined).
  std::int64_t integer(const nlohmann::json& j, const std::string& path, std::int64_t lo,
                       std::int64_t hi) const {
    std::int64_t v = 0;
    if (!json_int64(j, &v) || v < lo || v > hi)
      fail(path, "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    return v;
  }
  std::string string(const nlohmann::json& j, const std::string& path) const {
    if (!j.is_string()) fail(path, "must be a string");
    return j.get<std::string>();
  }
  // [[x, ms], ...] with x strictly ascending and positive values.
  std::vector<ProfilePoint> points(const nlohmann::json& j, const std::string& path) const {
    if (!j.is_array() || j.empty()) fail(path, "must be a non-empty array of [x, ms] pairs");
    std::vector<ProfilePoint> v;
    for (std::size_t i = 0; i < j.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (!j[i].is_array() || j[i].size() != 2) fail(p, "must be an [x, ms] pair");
      ProfilePoint pt{number(j[i][0], p + "[0]", true), number(j[i][1], p + "[1]", true)};
      if (!v.empty() && pt.x <= v.back().x) fail(p, "x must be strictly ascending");
      v.push_back(pt);
    }
    return v;
  }
};

nlohmann::json points_json(const std::vector<ProfilePoint>& pts) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : pts) a.push_back({p.x, p.ms});
  return a;
}

// "<collective>/<group size>" -> points, the size written as collective_key writes it (so that
// the cost model's lookups find it): 1 to kMaxGroup, no sign, no leading zero.
MachineProfile::CollectiveTables collective_tables(const Reader& rd, const nlohmann::json& c,
                                                   const std::string& path) {
  if (!c.is_object()) rd.fail(path, "must be an object");
  MachineProfile::CollectiveTables out;
  for (const auto& [key, pts] : c.items()) {
    bool known = false;
    for (Collective k : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                         Collective::kAllToAll, Collective::kBroadcast}) {
      const std::string prefix = std::string(collective_name(k)) + "/";
      if (key.rfind(prefix, 0) != 0) continue;
      const char* first = key.data() + prefix.size();
      const char* last = key.data() + key.size();
      int n = 0;
      const auto [end, ec] = std::from_chars(first, last, n);
      known = ec == std::errc() && end == last && n >= 1 && n <= kMaxGroup &&
              MachineProfile::collective_key(k, n) ==
                  key;  // no sign or leading zero: the writer's spelling
    }
    if (!known)
      rd.fail(path + "." + key,
              "is not <collective>/<group size 1.." + std::to_string(kMaxGroup) + ">");
    out[key] = rd.points(pts, path + "." + key);
  }
  return out;
}

}  // namespace

std::string MachineProfile::collective_key(Collective c, int group_size) {
  return std::string(collective_name(c)) + "/" + std::to_string(group_size);
}

MachineProfile MachineProfile::from_json(const nlohmann::json& j, const std::string& source) {
  const Reader rd{source};
  MachineProfile p;
  if (!j.is_object()) rd.fail("(top level)", "must be an object");
  std::int64_t version = 0;
  if (!json_int64(rd.at(j, "version", ""), &version) || version != 1)
    rd.fail("version", "must be 1 (this build reads profile version 1)");
  const auto& m = rd.at(j, "machine", "");
  p.machine.cpu = rd.string(rd.at(m, "cpu", "machine"), "machine.cpu");
  p.machine.isa = rd.string(rd.at(m, "isa", "machine"), "machine.isa");
  p.machine.mpi = rd.string(rd.at(m, "mpi", "machine"), "machine.mpi");
  p.machine.cores =
      static_cast<int>(rd.integer(rd.at(m, "cores", "machine"), "machine.cores", 1, INT_MAX));
  p.machine.ranks =
      static_cast<int>(rd.integer(rd.at(m, "ranks", "machine"), "machine.ranks", 1, INT_MAX));
  // gemm: reference shapes by ascending n*k; layer_gemm: exact shapes, one table per (n, k).
  auto tables = [&](const nlohmann::json& g, const std::string& name, bool reference) {
    std::map<std::string, std::vector<GemmTable>> out;
    if (!g.is_object() || (reference && g.empty()))
      rd.fail(name, "must be an object of dtype tables");
    for (const auto& [dt, tabs] : g.items()) {
      const std::string path = name + "." + dt;
      if (dt != "f32" && dt != "bf16" && dt != "int8" && dt != "w8a8")
        rd.fail(path, "is not f32, bf16, int8 or w8a8");
      if (!tabs.is_array() || tabs.empty()) rd.fail(path, "must be a non-empty array of shapes");
      auto& v = out[dt];
      for (std::size_t i = 0; i < tabs.size(); ++i) {
        const std::string tp = path + "[" + std::to_string(i) + "]";
        GemmTable t;
        t.k = rd.integer(rd.at(tabs[i], "k", tp), tp + ".k", 1, kMaxDim);
        t.n = rd.integer(rd.at(tabs[i], "n", tp), tp + ".n", 1, kMaxDim);
        t.impl = rd.string(rd.at(tabs[i], "impl", tp), tp + ".impl");
        t.rows = rd.points(rd.at(tabs[i], "rows", tp), tp + ".rows");
        if (reference && !v.empty() && double(t.n) * t.k <= double(v.back().n) * v.back().k)
          rd.fail(tp, "shapes must be listed by ascending weight size n*k");
        if (!reference && std::any_of(v.begin(), v.end(),
                                      [&](const GemmTable& o) { return o.n == t.n && o.k == t.k; }))
          rd.fail(tp,
                  "repeats the shape n = " + std::to_string(t.n) + ", k = " + std::to_string(t.k));
        v.push_back(std::move(t));
      }
    }
    return out;
  };
  p.gemm = tables(rd.at(j, "gemm", ""), "gemm", true);
  if (j.contains("layer_gemm")) p.layer_gemm = tables(j["layer_gemm"], "layer_gemm", false);
  p.collectives = collective_tables(rd, rd.at(j, "collectives", ""), "collectives");
  if (j.contains("comm")) {
    p.comm = rd.string(j["comm"], "comm");
    if (p.comm.empty()) rd.fail("comm", "must name a communicator");
  }
  if (j.contains("comm_collectives")) {
    const auto& cc = j["comm_collectives"];
    if (!cc.is_object()) rd.fail("comm_collectives", "must be an object of communicator kinds");
    if (!cc.empty() && p.comm.empty())
      rd.fail("comm_collectives", "needs 'comm', the kind 'collectives' were measured on");
    for (const auto& [kind, tabs] : cc.items()) {
      if (kind != "mpi" && kind != "shm") rd.fail("comm_collectives." + kind, "is not mpi or shm");
      if (kind == p.comm)
        rd.fail("comm_collectives." + kind, "repeats 'comm', whose tables are 'collectives'");
      p.comm_collectives[kind] = collective_tables(rd, tabs, "comm_collectives." + kind);
    }
  }
  const auto& f = rd.at(j, "fused", "");
  if (!f.is_object()) rd.fail("fused", "must be an object");
  for (const auto& [key, pts] : f.items()) {
    if (key != "gemm_all_reduce" && key != "gemm_reduce_scatter" && key != "all_gather_gemm")
      rd.fail("fused." + key, "is not gemm_all_reduce, gemm_reduce_scatter or all_gather_gemm");
    p.fused[key] = rd.points(pts, "fused." + key);
  }
  p.copy_gbps = rd.number(rd.at(j, "copy_gbps", ""), "copy_gbps", true);
  return p;
}

MachineProfile MachineProfile::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, Where{"profile"}, "cannot open profile '", path, "'");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (in.bad()) TPL_THROW(IoError, Where{"profile"}, "cannot read profile '", path, "'");
  nlohmann::json j;
  try {
    j = parse_json(text);  // nesting bounded (tpl/json_text.h)
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, Where{"profile"}, path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

nlohmann::json MachineProfile::to_json() const {
  nlohmann::json j{{"version", version},
                   {"machine",
                    {{"cpu", machine.cpu},
                     {"isa", machine.isa},
                     {"mpi", machine.mpi},
                     {"cores", machine.cores},
                     {"ranks", machine.ranks}}},
                   {"gemm", nlohmann::json::object()},
                   {"collectives", nlohmann::json::object()},
                   {"fused", nlohmann::json::object()},
                   {"copy_gbps", copy_gbps}};
  auto tables = [](const std::map<std::string, std::vector<GemmTable>>& m) {
    nlohmann::json o = nlohmann::json::object();
    for (const auto& [dt, tabs] : m)
      for (const auto& t : tabs)
        o[dt].push_back({{"k", t.k}, {"n", t.n}, {"impl", t.impl}, {"rows", points_json(t.rows)}});
    return o;
  };
  j["gemm"] = tables(gemm);
  if (!layer_gemm.empty()) j["layer_gemm"] = tables(layer_gemm);
  for (const auto& [k, pts] : collectives) j["collectives"][k] = points_json(pts);
  if (!comm.empty()) j["comm"] = comm;
  for (const auto& [kind, tabs] : comm_collectives) {
    j["comm_collectives"][kind] = nlohmann::json::object();
    for (const auto& [k, pts] : tabs) j["comm_collectives"][kind][k] = points_json(pts);
  }
  for (const auto& [k, pts] : fused) j["fused"][k] = points_json(pts);
  return j;
}

const GemmTable* MachineProfile::layer_table(const std::string& key, std::int64_t n,
                                             std::int64_t k) const {
  const auto it = layer_gemm.find(key);
  if (it == layer_gemm.end()) return nullptr;
  for (const auto& t : it->second)
    if (t.n == n && t.k == k) return &t;
  return nullptr;
}

const MachineProfile::CollectiveTables* MachineProfile::collectives_of(
    const std::string& kind) const {
  if (kind.empty() || kind == comm) return &collectives;
  const auto it = comm_collectives.find(kind);
  return it == comm_collectives.end() ? nullptr : &it->second;
}

std::vector<std::string> MachineProfile::mismatches(const MachineInfo& now) const {
  std::vector<std::string> v;
  auto cmp = [&](const char* what, const std::string& was, const std::string& is) {
    if (was != is)
      v.push_back(std::string(what) + ": profile '" + was + "', this machine '" + is + "'");
  };
  cmp("cpu", machine.cpu, now.cpu);
  cmp("isa", machine.isa, now.isa);
  cmp("cores", std::to_string(machine.cores), std::to_string(now.cores));
  cmp("mpi", machine.mpi, now.mpi);
  return v;
}

}  // namespace tpl
