#include "tpl/watchdog.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tpl/build_config.h"
#include "tpl/error.h"

namespace tpl {
namespace {

constexpr auto kTick = std::chrono::milliseconds(100);

std::string format_seconds(double s) {
  std::ostringstream os;
  os.precision(s < 10 ? 2 : 4);
  os << s;
  return os.str();
}

// TPL_FAULT_STALL / TPL_FAULT_THROW="<rank>:<n>": the n-th watched collective of `rank`, or 0.
std::uint64_t fault_point(const char* name, int world_rank) {
#if TPL_FAULT_INJECTION
  const char* e = std::getenv(name);
  if (!e || !*e) return 0;
  const std::string s = e;
  const auto colon = s.find(':');
  char* end = nullptr;
  const long rank = std::strtol(s.c_str(), &end, 10);
  const long long n =
      colon == std::string::npos ? 0 : std::strtoll(s.c_str() + colon + 1, &end, 10);
  TPL_CHECK_T(colon != std::string::npos && end && *end == '\0' && rank >= 0 && n >= 1, ConfigError,
              (Where{name, world_rank}), name,
              " must be <world rank>:<collective number from 1>, got '", s, "'");
  return rank == world_rank ? static_cast<std::uint64_t>(n) : 0;
#else
  (void)name;
  (void)world_rank;
  return 0;
#endif
}

}  // namespace

double Watchdog::timeout_from_env(double fallback) {
  const char* e = std::getenv("TPL_TIMEOUT");
  if (!e || !*e) return fallback;
  char* end = nullptr;
  const double v = std::strtod(e, &end);
  TPL_CHECK_T(end && *end == '\0' && std::isfinite(v) && v >= 0, ConfigError,
              (Where{"TPL_TIMEOUT"}),
              "TPL_TIMEOUT must be a number of seconds >= 0 (0 = no deadline), got '", e, "'");
  return v;
}

Watchdog::Watchdog(double timeout_s, int world_rank, Expiry on_expiry)
    : world_rank_(world_rank),
      on_expiry_(std::move(on_expiry)),
      t0_(std::chrono::steady_clock::now()),
      timeout_s_(timeout_s),
      ring_(kRing),
      stall_at_(fault_point("TPL_FAULT_STALL", world_rank)),
      throw_at_(fault_point("TPL_FAULT_THROW", world_rank)) {
  active_.reserve(16);
  thread_ = std::thread([this] { loop(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::set_timeout(double timeout_s) {
  std::lock_guard<std::mutex> lock(mu_);
  timeout_s_ = timeout_s;
}

double Watchdog::timeout() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timeout_s_;
}

double Watchdog::since_start(std::chrono::steady_clock::time_point t) const {
  return std::chrono::duration<double>(t - t0_).count();
}

Watchdog::Scope& Watchdog::Scope::operator=(Scope&& o) noexcept {
  if (this != &o) {
    end();
    wd_ = o.wd_;
    id_ = o.id_;
    o.wd_ = nullptr;
  }
  return *this;
}

void Watchdog::Scope::end() {
  if (wd_) wd_->finish(id_);
  wd_ = nullptr;
}

Watchdog::Scope Watchdog::watch(const char* op, const std::string* group, std::uint64_t group_seq,
                                std::int64_t bytes) {
  const auto now = std::chrono::steady_clock::now();
  std::uint64_t id = 0;
  bool stall = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = ++next_id_;
    stall = stall_at_ != 0 && id == stall_at_;
    if (throw_at_ != 0 && id == throw_at_)
      TPL_THROW(IoError, (Where{"fault injection", world_rank_}),
                "TPL_FAULT_THROW: this rank alone fails before collective ", id, " (", op,
                "), as a shard file corrupted for one rank would");
    if (!stall) {
      CollectiveRecord& r = ring_[recorded_ % kRing];
      r.seq = id;
      r.group_seq = group_seq;
      r.op.assign(op);
      if (group)
        r.group.assign(*group);
      else
        r.group.clear();
      r.bytes = bytes;
      r.completed = false;
      r.started_s = since_start(now);
      r.elapsed_s = 0;
      active_.push_back({id, now, recorded_++, false});
    }
  }
  // Fault injection: this rank never joins collective `id`, as if stopped there, and is not
  // registered, so only the peers' deadlines fire.
  while (stall) std::this_thread::sleep_for(std::chrono::seconds(1));
  return Scope(this, id);
}

void Watchdog::finish(std::uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it =
      std::find_if(active_.begin(), active_.end(), [&](const Entry& e) { return e.id == id; });
  if (it == active_.end()) return;
  if (it->record + kRing >= recorded_) {  // not yet overwritten
    CollectiveRecord& r = ring_[it->record % kRing];
    r.completed = true;
    r.elapsed_s = since_start(std::chrono::steady_clock::now()) - r.started_s;
  }
  active_.erase(it);
}

std::vector<CollectiveRecord> Watchdog::records() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CollectiveRecord> v;
  for (std::size_t n = recorded_ > kRing ? recorded_ - kRing : 0; n < recorded_; ++n)
    v.push_back(ring_[n % kRing]);
  const double now = since_start(std::chrono::steady_clock::now());
  for (auto& r : v)
    if (!r.completed) r.elapsed_s = now - r.started_s;
  return v;
}

std::string Watchdog::dump_json() const {
  nlohmann::json records = nlohmann::json::array();
  for (const CollectiveRecord& r : this->records())
    records.push_back({{"seq", r.seq},
                       {"group_seq", r.group_seq},
                       {"op", r.op},
                       {"group", r.group},
                       {"bytes", r.bytes},
                       {"state", r.completed ? "completed" : "started"},
                       {"started_s", r.started_s},
                       {"elapsed_s", r.elapsed_s}});
  nlohmann::json j{{"rank", world_rank_}, {"timeout_s", timeout()}, {"records", records}};
  return j.dump(1);
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, kTick);
    if (stop_ || timeout_s_ <= 0) continue;
    const auto now = std::chrono::steady_clock::now();
    for (Entry& e : active_) {
      const double waited = std::chrono::duration<double>(now - e.start).count();
      if (e.fired || waited <= timeout_s_) continue;
      e.fired = true;
      std::string line;
      if (e.record + kRing >= recorded_) {
        const CollectiveRecord& r = ring_[e.record % kRing];
        line = "rank " + std::to_string(world_rank_) + ": " + r.op + " #" +
               std::to_string(r.group_seq) + " on " + r.group + ", " + std::to_string(r.bytes) +
               " bytes, has not completed after " + format_seconds(waited) + " s (deadline " +
               format_seconds(timeout_s_) +
               " s, TPL_TIMEOUT or --timeout): a member of the group has stalled or died";
      } else {
        line = "rank " + std::to_string(world_rank_) + ": a collective has not completed after " +
               format_seconds(waited) + " s";
      }
      // The action may dump the recorder (which locks) and abort; run it unlocked.
      Expiry act = on_expiry_;
      lock.unlock();
      if (act) act(line, *this);
      lock.lock();
      break;  // active_ may have changed while unlocked
    }
  }
}

}  // namespace tpl
