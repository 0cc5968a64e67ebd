#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "tpl/communicator.h"
#include "tpl/error.h"
#include "tpl/memory.h"
#include "tpl/tensor.h"

namespace tpl {

namespace {

const Where kWhere{"memory"};

std::string read_text(const char* path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

// "Name:   123 kB" of /proc/meminfo or /proc/self/status, in bytes; < 0 when absent.
double kib_field(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + ":", 0) != 0) continue;
    std::istringstream v(line.substr(name.size() + 1));
    double kib = -1;
    if (v >> kib) return kib * 1024.0;
  }
  return -1;
}

std::string gib(double bytes) {
  char buf[32];
  if (bytes >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1f GiB", bytes / (1024.0 * 1024 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.0f MiB", std::ceil(bytes / (1024.0 * 1024)));
  return buf;
}

}  // namespace

double parse_byte_size(const std::string& text, const char* what) {
  const std::string t = trim(text);
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  std::string unit = trim(end ? std::string(end) : "");
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (!unit.empty() && (unit.back() == 'i')) unit.pop_back();
  double scale = 1;
  if (unit.size() == 1) {
    const char* units = "KMGT";
    const char* at = std::strchr(units, std::toupper(static_cast<unsigned char>(unit[0])));
    if (at && *at)
      scale = std::pow(1024.0, double(at - units + 1));
    else
      scale = -1;
  } else if (!unit.empty()) {
    scale = -1;
  }
  if (t.empty() || end == t.c_str() || scale < 0 || !std::isfinite(v) || v < 0)
    TPL_THROW(ConfigError, kWhere, what, " = '", text,
              "' is not a byte count (a number with an optional K, M, G or T suffix)");
  return v * scale;
}

HostMemory host_memory_from(const std::string& meminfo, const std::string& cgroup_limit,
                            const std::string& cgroup_usage, const char* env_override) {
  HostMemory m;
  if (env_override && *env_override) {
    m.available = parse_byte_size(env_override, "TPL_MEMORY_AVAILABLE");
    m.source = "TPL_MEMORY_AVAILABLE";
    return m;
  }
  m.available = kib_field(meminfo, "MemAvailable");
  m.source = "MemAvailable";
  const std::string lim = trim(cgroup_limit);
  if (!lim.empty() && lim != "max") {
    char* end = nullptr;
    const double limit = std::strtod(lim.c_str(), &end);
    const double usage = std::strtod(trim(cgroup_usage).c_str(), nullptr);
    // cgroup v1 writes a huge number (the page-aligned LONG_MAX) for "no limit".
    if (end != lim.c_str() && limit > 0 && limit < 1e18) {
      const double left = std::max(0.0, limit - usage);
      if (m.available < 0 || left < m.available) {
        m.available = left;
        m.source = "cgroup limit " + gib(limit) + " minus its usage";
      }
    }
  }
  return m;
}

HostMemory host_memory_available() {
  std::string limit = read_text("/sys/fs/cgroup/memory.max"), usage;
  if (!limit.empty()) {
    usage = read_text("/sys/fs/cgroup/memory.current");
  } else {
    limit = read_text("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    usage = read_text("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  return host_memory_from(read_text("/proc/meminfo"), limit, usage,
                          std::getenv("TPL_MEMORY_AVAILABLE"));
}

ResidentMemory resident_memory() {
  const std::string s = read_text("/proc/self/status");
  return {kib_field(s, "VmRSS"), kib_field(s, "VmHWM")};
}

void MemoryEstimate::add(const std::string& what, double bytes) {
  if (bytes <= 0) return;
  for (Item& i : items)
    if (i.what == what) {
      i.bytes += bytes;
      return;
    }
  items.push_back({what, bytes});
}

void MemoryEstimate::then(const std::string& what, const MemoryEstimate& later) {
  add(what, later.held());
  runtime = std::max(runtime, later.runtime);
  // The larger of the two, plus what of the other malloc may keep resident: freed blocks below
  // its mmap threshold (at most 32 MiB each in glibc) stay in its heap, larger ones go back to
  // the kernel. 64 MiB bounds what was measured (cli_run_memory_estimate_np2's model).
  constexpr double kMallocKeeps = 64.0 * 1024 * 1024;
  transient =
      std::max(transient, later.transient) + std::min({transient, later.transient, kMallocKeeps});
}

double MemoryEstimate::held() const {
  double t = 0;
  for (const Item& i : items) t += i.bytes;
  return t;
}

std::string MemoryEstimate::describe() const {
  std::string s = gib(total());
  for (std::size_t i = 0; i < items.size(); ++i)
    s += (i == 0 ? " = " : " + ") + items[i].what + " " + gib(items[i].bytes);
  for (const auto& [name, bytes] : {std::pair{"runtime", runtime}, {"transient", transient}})
    if (bytes > 0)
      s +=
          std::string(s.find(" = ") == std::string::npos ? " = " : " + ") + name + " " + gib(bytes);
  return s;
}

void check_host_memory(Communicator& world, const MemoryEstimate& mine, const std::string& what,
                       const std::string& way_out) {
  const char* flag = std::getenv("TPL_MEMORY_CHECK");
  const bool off = flag && (std::string(flag) == "0" || std::string(flag) == "off");
  // Every rank takes part whatever its own setting says, so that a rank-local environment
  // cannot leave the others waiting in the gather.
  const HostMemory avail = host_memory_available();
  struct Row {
    std::uint64_t node;
    double need, available;
    std::uint8_t off;
    char host[64];
    char items[320];
    char source[64];
  };
  Row row{};
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  row.node = std::hash<std::string>{}(host);
  row.need = mine.total();
  row.available = avail.available;
  row.off = off ? 1 : 0;
  std::snprintf(row.host, sizeof row.host, "%s", host);
  std::snprintf(row.items, sizeof row.items, "%s", mine.describe().c_str());
  std::snprintf(row.source, sizeof row.source, "%s", avail.source.c_str());

  const int n = world.size();
  Tensor in(DType::kI8, 1, sizeof(Row)), all(DType::kI8, n, sizeof(Row));
  std::memcpy(in.data(), &row, sizeof(Row));
  world.all_gather(in, all, 0);
  std::vector<Row> rows(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) std::memcpy(&rows[r], all.view().at(r, 0), sizeof(Row));

  bool any_off = false;
  for (const Row& r : rows) any_off = any_off || r.off;
  if (any_off) return;
  // Nodes in order of their first rank, so every rank reports the same one.
  std::map<int, std::vector<int>> nodes;
  for (int r = 0; r < n; ++r) {
    int first = r;
    for (int q = 0; q < r; ++q)
      if (rows[q].node == rows[r].node) {
        first = q;
        break;
      }
    nodes[first].push_back(r);
  }
  for (const auto& [first, members] : nodes) {
    double need = 0, available = -1;
    int least = members.front(), largest = members.front();
    for (int r : members) {
      need += rows[r].need;
      if (rows[r].available >= 0 && (available < 0 || rows[r].available < available)) {
        available = rows[r].available;
        least = r;
      }
      if (rows[r].need > rows[largest].need) largest = r;
    }
    if (available < 0 || need <= available) continue;
    std::ostringstream msg;
    msg << "not enough host memory for " << what << ": ";
    if (members.size() > 1)
      msg << "the " << members.size() << " ranks on node " << rows[first].host << " need "
          << gib(need) << " (rank " << largest << ": " << rows[largest].items << ")";
    else
      msg << "rank " << first << " on node " << rows[first].host << " needs " << rows[first].items;
    msg << ", " << gib(available) << " available (" << rows[least].source << ")";
    if (!way_out.empty()) msg << "; " << way_out;
    msg << " (TPL_MEMORY_CHECK=0 skips this check)";
    TPL_THROW(OutOfMemory, (Where{"memory", world.rank()}), msg.str());
  }
}

}  // namespace tpl
