#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "tpl/cluster.h"
#include "tpl/error.h"
#include "tpl/json_text.h"

namespace tpl {

namespace {

// Group sizes and GEMM dimensions: far above any cluster or layer, and small enough that the
// hierarchical step counts (group + gpus_per_node) and 2·M·N·K stay exact and finite.
constexpr std::int64_t kMaxGroup = 1 << 20, kMaxDim = std::int64_t{1} << 32;

std::string format_g(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

[[noreturn]] void fail(const std::string& source, const std::string& field,
                       const std::string& what) {
  TPL_THROW(ConfigError, Where{"cluster profile"}, source, ": field '", field, "' ", what);
}

// Every figure is a published rate or time, so each has a range in which predictions stay
// finite: rates in [kMinRate, kMaxFigure], times in [0, kMaxFigure] (µs).
constexpr double kMinRate = 1e-6, kMaxFigure = 1e9;

double number(const nlohmann::json& j, const std::string& key, const std::string& path,
              const std::string& source, double lo = 0, double hi = kMaxFigure) {
  const std::string f = path.empty() ? key : path + "." + key;
  if (!j.is_object()) fail(source, path, "must be an object");
  if (!j.contains(key)) fail(source, f, "is missing");
  const nlohmann::json& v = j.at(key);
  if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
    fail(source, f, "must be a number in [" + format_g(lo) + ", " + format_g(hi) + "]");
  return v.get<double>();
}
double rate(const nlohmann::json& j, const std::string& key, const std::string& path,
            const std::string& source) {
  return number(j, key, path, source, kMinRate, kMaxFigure);
}
// A JSON integer in [lo, hi]: a float (8.0, 1e300) is refused rather than truncated.
std::int64_t integer(const nlohmann::json& j, const std::string& key, const std::string& path,
                     const std::string& source, std::int64_t lo, std::int64_t hi) {
  const std::string f = path.empty() ? key : path + "." + key;
  if (!j.is_object()) fail(source, path, "must be an object");
  if (!j.contains(key)) fail(source, f, "is missing");
  std::int64_t v = 0;
  if (!json_int64(j.at(key), &v) || v < lo || v > hi)
    fail(source, f,
         "must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

ClusterLink link_of(const nlohmann::json& j, const std::string& path, const std::string& src) {
  ClusterLink l;
  if (!j.is_object()) fail(src, path, "must be an object");
  l.latency_us = number(j, "latency_us", path, src);
  l.step_us = number(j, "step_us", path, src);
  if (!j.contains("busbw_gbps") || !j.at("busbw_gbps").is_object())
    fail(src, path + ".busbw_gbps", "must be an object of collective -> GB/s");
  for (Collective c : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                       Collective::kAllToAll, Collective::kBroadcast}) {
    l.busbw_gbps[collective_name(c)] =
        rate(j.at("busbw_gbps"), collective_name(c), path + ".busbw_gbps", src);
  }
  return l;
}

// nccl-tests' bus-bandwidth factor and ring step count of a collective on g ranks.
double bus_factor(Collective c, int g) {
  if (c == Collective::kAllReduce) return 2.0 * (g - 1) / g;
  if (c == Collective::kBroadcast) return 1.0;
  return double(g - 1) / g;
}
int steps(Collective c, int g) {
  return c == Collective::kAllReduce ? 2 * (g - 1) : g - 1;
}

double link_us(const ClusterLink& l, Collective c, double bytes, int g) {
  if (g <= 1 || bytes <= 0) return 0;
  const double bw = l.busbw_gbps.at(collective_name(c));  // GB/s = 1e3 bytes/us
  return l.latency_us + steps(c, g) * l.step_us + bytes * bus_factor(c, g) / (bw * 1e3);
}

}  // namespace

ClusterProfile ClusterProfile::from_json(const nlohmann::json& j, const std::string& source) {
  ClusterProfile p;
  if (!j.is_object()) fail(source, "(top level)", "must be an object");
  if (!j.contains("version") || j.at("version") != 1) fail(source, "version", "must be 1");
  if (!j.contains("name") || !j.at("name").is_string()) fail(source, "name", "must be a string");
  p.name = j.at("name").get<std::string>();
  if (j.contains("sources")) {
    const auto& ss = j.at("sources");
    if (!ss.is_array() ||
        !std::all_of(ss.begin(), ss.end(), [](const auto& e) { return e.is_string(); }))
      fail(source, "sources", "must be an array of strings");
    for (const auto& e : ss) p.sources.push_back(e.get<std::string>());
  }
  p.gpus_per_node = static_cast<int>(integer(j, "gpus_per_node", "", source, 1, kMaxGroup));
  const auto& g = j.contains("gemm") ? j.at("gemm") : nlohmann::json();
  if (!g.is_object()) fail(source, "gemm", "is missing");
  if (!g.contains("peak_tflops") || !g.at("peak_tflops").is_object() || g.at("peak_tflops").empty())
    fail(source, "gemm.peak_tflops", "must be an object of dtype -> TFLOP/s");
  for (const auto& [dt, v] : g.at("peak_tflops").items()) {
    if (dt != "bf16" && dt != "int8" && dt != "f32")
      fail(source, "gemm.peak_tflops." + dt, "is not a dtype (bf16, int8, f32)");
    p.peak_tflops[dt] = rate(g.at("peak_tflops"), dt, "gemm.peak_tflops", source);
  }
  p.gemm_efficiency = number(g, "efficiency", "gemm", source, 0.01, 1);
  p.launch_us = number(g, "launch_us", "gemm", source);
  p.memory_gbps = rate(g, "memory_gbps", "gemm", source);
  if (!j.contains("intra")) fail(source, "intra", "is missing");
  if (!j.contains("inter")) fail(source, "inter", "is missing");
  p.intra = link_of(j.at("intra"), "intra", source);
  p.inter = link_of(j.at("inter"), "inter", source);
  if (j.contains("checks")) {
    const auto& cs = j.at("checks");
    if (!cs.is_array()) fail(source, "checks", "must be an array");
    for (std::size_t i = 0; i < cs.size(); ++i) {
      const std::string path = "checks[" + std::to_string(i) + "]";
      const auto& c = cs[i];
      ClusterCheck k;
      if (!c.is_object() || !c.contains("source") || !c.contains("kind") ||
          !c.at("source").is_string() || !c.at("kind").is_string())
        fail(source, path, "needs string fields 'source' and 'kind'");
      k.source = c.at("source").get<std::string>();
      k.kind = c.at("kind").get<std::string>();
      if (k.kind == "gemm") {
        if (c.contains("dtype")) {
          if (!c.at("dtype").is_string()) fail(source, path + ".dtype", "must be a string");
          k.dtype = c.at("dtype").get<std::string>();
        }
        if (!p.peak_tflops.count(k.dtype)) fail(source, path + ".dtype", "has no peak_tflops");
        k.n = integer(c, "n", path, source, 1, kMaxDim);
        k.k = integer(c, "k", path, source, 1, kMaxDim);
      } else {
        bool known = false;
        for (Collective x : {Collective::kAllReduce, Collective::kReduceScatter,
                             Collective::kAllGather, Collective::kAllToAll, Collective::kBroadcast})
          known = known || k.kind == collective_name(x);
        if (!known) fail(source, path + ".kind", "must be gemm or a collective name");
        k.group = static_cast<int>(integer(c, "group", path, source, 2, kMaxGroup));
      }
      if (!c.contains("points") || !c.at("points").is_array() || c.at("points").empty())
        fail(source, path + ".points", "must be a non-empty array of [x, y] pairs");
      for (const auto& pt : c.at("points")) {
        const auto in_range = [](const nlohmann::json& v) {
          return v.is_number() && v.get<double>() >= kMinRate && v.get<double>() <= 1e15;
        };
        if (!pt.is_array() || pt.size() != 2 || !in_range(pt[0]) || !in_range(pt[1]))
          fail(source, path + ".points", "must hold [x, y] pairs of numbers in [1e-06, 1e+15]");
        k.points.emplace_back(pt[0].get<double>(), pt[1].get<double>());
      }
      p.checks.push_back(std::move(k));
    }
  }
  return p;
}

ClusterProfile ClusterProfile::from_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) TPL_THROW(IoError, Where{"cluster profile"}, "cannot open cluster profile '", path, "'");
  nlohmann::json j;
  try {
    j = parse_json(std::string(std::istreambuf_iterator<char>(f), {}));  // nesting limited
  } catch (const nlohmann::json::exception& e) {
    TPL_THROW(ConfigError, Where{"cluster profile"}, path, ": not JSON: ", e.what());
  }
  return from_json(j, path);
}

double ClusterProfile::gemm_ms(const std::string& dtype, double m, double n, double k) const {
  const auto it = peak_tflops.find(dtype);
  TPL_CHECK_T(it != peak_tflops.end(), Unsupported, (Where{"cluster profile"}), name, " has no ",
              dtype, " GEMM rate");
  const double e = dtype == "f32" ? 4.0 : dtype == "int8" ? 1.0 : 2.0;
  const double compute_us = 2 * m * n * k / (it->second * gemm_efficiency * 1e6);
  const double memory_us = (n * k + m * k + m * n) * e / (memory_gbps * 1e3);
  return (launch_us + std::max(compute_us, memory_us)) * 1e-3;
}

double ClusterProfile::collective_ms(Collective c, double bytes, int group) const {
  if (group <= 1 || bytes <= 0) return 0;
  const int local = std::min(group, gpus_per_node);
  if (group <= gpus_per_node) return link_us(intra, c, bytes, group) * 1e-3;
  // Hierarchical: the node's ranks first cut the data over NVLink, the NICs carry the node's
  // share between nodes, then NVLink again. Groups are assumed whole nodes.
  const int nodes = (group + gpus_per_node - 1) / gpus_per_node;
  double us = 0;
  switch (c) {
    case Collective::kAllReduce:
      us = link_us(intra, Collective::kReduceScatter, bytes, local) +
           link_us(inter, Collective::kAllReduce, bytes / local, nodes) +
           link_us(intra, Collective::kAllGather, bytes, local);
      break;
    case Collective::kReduceScatter:  // S = the full input: node-level, then across nodes
      us = link_us(intra, Collective::kReduceScatter, bytes, local) +
           link_us(inter, Collective::kReduceScatter, bytes / local, nodes);
      break;
    case Collective::kAllGather:  // S = the full output
      us = link_us(inter, Collective::kAllGather, bytes / local, nodes) +
           link_us(intra, Collective::kAllGather, bytes, local);
      break;
    case Collective::kAllToAll:  // every rank's off-node pieces cross its NIC
      us = std::max(link_us(intra, Collective::kAllToAll, bytes * local / group, local),
                    link_us(inter, Collective::kAllToAll, bytes, nodes));
      break;
    case Collective::kBroadcast:
      us = link_us(inter, Collective::kBroadcast, bytes, nodes) +
           link_us(intra, Collective::kBroadcast, bytes, local);
      break;
  }
  return us * 1e-3;
}

MachineProfile ClusterProfile::synthesize(const std::vector<int>& groups) const {
  MachineProfile p;
  p.machine.cpu = name;
  p.machine.isa = "simulated";
  p.machine.mpi = "simulated";
  p.machine.cores = 0;
  p.machine.ranks = 0;
  // Rows up to 64K tokens; square weights 512^2 .. 32768^2 (the cost model interpolates per
  // weight element between them, so small shards keep their launch cost).
  std::vector<double> rows;
  for (double m = 1; m <= 65536; m *= 2) rows.push_back(m);
  for (const auto& [dt, peak] : peak_tflops) {
    (void)peak;
    for (std::int64_t s = 512; s <= 32768; s *= 2) {
      GemmTable t;
      t.n = t.k = s;
      t.impl = "simulated";
      for (double m : rows) t.rows.push_back({m, gemm_ms(dt, m, double(s), double(s))});
      p.gemm[dt].push_back(std::move(t));
    }
  }
  for (int g : std::set<int>(groups.begin(), groups.end())) {  // a size asked twice: one table
    if (g < 2) continue;
    for (Collective c : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                         Collective::kAllToAll, Collective::kBroadcast}) {
      auto& pts = p.collectives[MachineProfile::collective_key(c, g)];
      for (double s = 1024; s <= 1024.0 * 1024 * 1024; s *= 2)
        pts.push_back({s, collective_ms(c, s, g)});
    }
  }
  p.copy_gbps = memory_gbps;
  return p;
}

std::vector<CheckResult> validate(const ClusterProfile& p) {
  std::vector<CheckResult> out;
  for (const ClusterCheck& c : p.checks)
    for (const auto& [x, y] : c.points) {
      CheckResult r{c.source, c.kind, x, y, 0};
      if (c.kind == "gemm") {
        const double ms = p.gemm_ms(c.dtype, x, double(c.n), double(c.k));
        r.predicted = 2 * x * double(c.n) * double(c.k) / (ms * 1e-3) / 1e12;  // TFLOP/s
      } else {
        Collective coll = Collective::kAllReduce;
        for (Collective k : {Collective::kAllReduce, Collective::kReduceScatter,
                             Collective::kAllGather, Collective::kAllToAll, Collective::kBroadcast})
          if (c.kind == collective_name(k)) coll = k;
        r.predicted = p.collective_ms(coll, x, c.group) * 1e3;  // us
      }
      out.push_back(r);
    }
  return out;
}

}  // namespace tpl
