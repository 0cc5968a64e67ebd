#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tpl/cluster.h"
#include "tpl/error.h"

namespace tpl {

namespace {

[[noreturn]] void fail(const std::string& source, const std::string& field,
                       const std::string& what) {
  TPL_THROW(ConfigError, Where{"cluster profile"}, source, ": field '", field, "' ", what);
}

double number(const nlohmann::json& j, const std::string& key, const std::string& path,
              const std::string& source, bool required = true, double def = 0) {
  const std::string f = path.empty() ? key : path + "." + key;
  if (!j.is_object()) fail(source, path, "must be an object");
  if (!j.contains(key)) {
    if (required) fail(source, f, "is missing");
    return def;
  }
  if (!j.at(key).is_number() || !std::isfinite(j.at(key).get<double>()) ||
      j.at(key).get<double>() < 0)
    fail(source, f, "must be a non-negative number");
  return j.at(key).get<double>();
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
    const double bw = number(j.at("busbw_gbps"), collective_name(c), path + ".busbw_gbps", src);
    if (bw <= 0) fail(src, path + ".busbw_gbps." + collective_name(c), "must be positive");
    l.busbw_gbps[collective_name(c)] = bw;
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
    if (!j.at("sources").is_array()) fail(source, "sources", "must be an array of strings");
    for (const auto& s : j.at("sources"))
      if (s.is_string()) p.sources.push_back(s.get<std::string>());
  }
  p.gpus_per_node = static_cast<int>(number(j, "gpus_per_node", "", source));
  if (p.gpus_per_node < 1) fail(source, "gpus_per_node", "must be >= 1");
  const auto& g = j.contains("gemm") ? j.at("gemm") : nlohmann::json();
  if (!g.is_object()) fail(source, "gemm", "is missing");
  if (!g.contains("peak_tflops") || !g.at("peak_tflops").is_object() || g.at("peak_tflops").empty())
    fail(source, "gemm.peak_tflops", "must be an object of dtype -> TFLOP/s");
  for (const auto& [dt, v] : g.at("peak_tflops").items()) {
    if (dt != "bf16" && dt != "int8" && dt != "f32")
      fail(source, "gemm.peak_tflops." + dt, "is not a dtype (bf16, int8, f32)");
    p.peak_tflops[dt] = number(g.at("peak_tflops"), dt, "gemm.peak_tflops", source);
  }
  p.gemm_efficiency = number(g, "efficiency", "gemm", source);
  if (p.gemm_efficiency <= 0 || p.gemm_efficiency > 1)
    fail(source, "gemm.efficiency", "must be in (0, 1]");
  p.launch_us = number(g, "launch_us", "gemm", source);
  p.memory_gbps = number(g, "memory_gbps", "gemm", source);
  if (p.memory_gbps <= 0) fail(source, "gemm.memory_gbps", "must be positive");
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
        k.dtype = c.value("dtype", std::string("bf16"));
        if (!p.peak_tflops.count(k.dtype)) fail(source, path + ".dtype", "has no peak_tflops");
        k.n = static_cast<std::int64_t>(number(c, "n", path, source));
        k.k = static_cast<std::int64_t>(number(c, "k", path, source));
      } else {
        bool known = false;
        for (Collective x : {Collective::kAllReduce, Collective::kReduceScatter,
                             Collective::kAllGather, Collective::kAllToAll, Collective::kBroadcast})
          known = known || k.kind == collective_name(x);
        if (!known) fail(source, path + ".kind", "must be gemm or a collective name");
        k.group = static_cast<int>(number(c, "group", path, source));
        if (k.group < 2) fail(source, path + ".group", "must be >= 2");
      }
      if (!c.contains("points") || !c.at("points").is_array() || c.at("points").empty())
        fail(source, path + ".points", "must be a non-empty array of [x, y] pairs");
      for (const auto& pt : c.at("points")) {
        if (!pt.is_array() || pt.size() != 2 || !pt[0].is_number() || !pt[1].is_number() ||
            pt[0].get<double>() <= 0 || pt[1].get<double>() <= 0)
          fail(source, path + ".points", "must hold positive [x, y] pairs");
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
    f >> j;
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
  for (int g : groups) {
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
