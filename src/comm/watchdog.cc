#include "tpl/watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::uint64_t fnv1a(const std::string& s, std::uint64_t h = 14695981039346656037ull) {
  for (const unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
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
      wall_t0_(wall_now()),
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

std::uint64_t Watchdog::register_group(const std::string& name,
                                       const std::vector<int>& world_ranks) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::uint64_t nth = name_counts_[name]++;
  std::uint64_t key = fnv1a(std::to_string(nth), fnv1a(name + "#"));
  for (bool taken = true; taken || key == 0;) {  // a (vanishingly rare) collision: rehash
    taken =
        std::any_of(groups_.begin(), groups_.end(), [&](const Group& g) { return g.key == key; });
    if (taken || key == 0) key = fnv1a("+", key);
  }
  groups_.push_back({key, name, world_ranks, true});
  return key;
}

void Watchdog::unregister_group(std::uint64_t key) {
  if (key == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  for (Group& g : groups_)
    if (g.key == key) g.alive = false;
  // Freed groups stay known a while, for the records that still name them; a program that
  // makes communicators without end must not grow this list without end.
  std::size_t dead = 0;
  for (const Group& g : groups_) dead += !g.alive;
  for (auto it = groups_.begin(); dead > kKeptGroups && it != groups_.end();) {
    if (!it->alive) {
      it = groups_.erase(it);
      --dead;
    } else {
      ++it;
    }
  }
  if (board_) board_->forget(key);
}

void Watchdog::set_board(ProgressBoard* board) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !dumping_; });  // the thread may be using the old one
  board_ = board;
}

ProgressBoard* Watchdog::board() const {
  std::lock_guard<std::mutex> lock(mu_);
  return board_;
}

void Watchdog::set_dump_dir(std::string dir) {
  std::lock_guard<std::mutex> lock(mu_);
  dump_dir_ = std::move(dir);
}

std::string Watchdog::dump_dir() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dump_dir_;
}

std::string Watchdog::write_dump() const {
  const std::string dir = dump_dir();
  if (dir.empty()) return "";
  const std::string path = dir + "/tplinear-flight-rank" + std::to_string(world_rank_) + ".json";
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return "";
  const std::string json = dump_json();
  const bool ok = std::fwrite(json.data(), 1, json.size(), f) == json.size();
  return std::fclose(f) == 0 && ok ? path : "";
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

std::uint64_t Watchdog::begin(const char* op, const std::string* group, std::uint64_t group_seq,
                              std::int64_t bytes, std::uint64_t group_key,
                              std::function<bool()> done, std::function<void()> on_expiry) {
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
      r.group_key = group_key;
      r.op.assign(op);
      if (group)
        r.group.assign(*group);
      else
        r.group.clear();
      r.bytes = bytes;
      r.completed = false;
      r.started_s = since_start(now);
      r.elapsed_s = 0;
      active_.push_back({id, now, recorded_++, false, group_key, group_seq, std::move(done),
                         std::move(on_expiry)});
      if (board_ && group_key) board_->joined(group_key, group_seq, op);
    }
  }
  // Fault injection: this rank never joins collective `id`, as if stopped there, and is not
  // registered, so only the peers' deadlines fire.
  while (stall) std::this_thread::sleep_for(std::chrono::seconds(1));
  return id;
}

Watchdog::Scope Watchdog::watch(const char* op, const std::string* group, std::uint64_t group_seq,
                                std::int64_t bytes, std::uint64_t group_key) {
  return Scope(this, begin(op, group, group_seq, bytes, group_key, {}, {}));
}

void Watchdog::watch_until(const char* op, const std::string* group, std::uint64_t group_seq,
                           std::int64_t bytes, std::uint64_t group_key, std::function<bool()> done,
                           std::function<void()> on_expiry) {
  TPL_CHECK(done != nullptr, (Where{"Watchdog::watch_until", world_rank_}),
            "a polled collective needs a completion test");
  (void)begin(op, group, group_seq, bytes, group_key, std::move(done), std::move(on_expiry));
}

void Watchdog::finish(std::uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it =
      std::find_if(active_.begin(), active_.end(), [&](const Entry& e) { return e.id == id; });
  if (it != active_.end()) finish_locked(it);
}

void Watchdog::finish_locked(std::vector<Entry>::iterator it) {
  if (it->record + kRing >= recorded_) {  // not yet overwritten
    CollectiveRecord& r = ring_[it->record % kRing];
    r.completed = true;
    r.elapsed_s = since_start(std::chrono::steady_clock::now()) - r.started_s;
  }
  if (board_ && it->group_key) board_->completed(it->group_key, it->group_seq);
  active_.erase(it);
}

std::size_t Watchdog::poll_locked() {
  std::size_t in_flight = 0;
  for (auto it = active_.begin(); it != active_.end();) {
    if (!it->done) {
      ++it;
      continue;
    }
    bool finished = true;
    try {
      finished = it->done();
    } catch (...) {  // a failed test: the failure surfaces where the result is used
    }
    if (finished) {
      const auto at = it - active_.begin();
      finish_locked(it);
      it = active_.begin() + at;
    } else {
      ++in_flight;
      ++it;
    }
  }
  return in_flight;
}

std::size_t Watchdog::poll() {
  std::lock_guard<std::mutex> lock(mu_);
  return poll_locked();
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
                       {"group_key", r.group_key},
                       {"op", r.op},
                       {"group", r.group},
                       {"bytes", r.bytes},
                       {"state", r.completed ? "completed" : "started"},
                       {"started_s", r.started_s},
                       {"elapsed_s", r.elapsed_s}});
  nlohmann::json groups = nlohmann::json::array();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Group& g : groups_)
      groups.push_back({{"key", g.key}, {"name", g.name}, {"world_ranks", g.world_ranks}});
  }
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  std::size_t recorded = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    recorded = recorded_;
  }
  nlohmann::json j{{"rank", world_rank_}, {"host", host},         {"timeout_s", timeout()},
                   {"wall_t0", wall_t0_}, {"recorded", recorded}, {"ring", kRing},
                   {"groups", groups},    {"records", records}};
  return j.dump(1);
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, kTick);
    if (stop_) continue;
    // Another rank's deadline expired and it asks for every recorder (progress_board.h).
    if (board_) {
      if (const std::uint64_t req = board_->pending_dump(dump_seen_)) {
        dump_seen_ = req;
        dumping_ = true;
        ProgressBoard* board = board_;
        lock.unlock();
        write_dump();
        board->dumped(req);
        lock.lock();
        dumping_ = false;
        cv_.notify_all();
        continue;
      }
    }
    poll_locked();
    if (timeout_s_ <= 0) continue;
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
        if (board_ && e.group_key) {
          const auto g = std::find_if(groups_.begin(), groups_.end(),
                                      [&](const Group& x) { return x.key == e.group_key; });
          if (g != groups_.end()) {
            const std::string who = board_->report(e.group_key, e.group_seq, g->world_ranks);
            if (!who.empty()) line += "; " + who;
          }
        }
      } else {
        line = "rank " + std::to_string(world_rank_) + ": a collective has not completed after " +
               format_seconds(waited) + " s";
      }
      // The hook and the action may dump the recorder (which locks) and abort; run them
      // unlocked. The hook first: it unblocks what the action may wait for.
      Expiry act = on_expiry_;
      std::function<void()> hook = e.on_expiry;
      lock.unlock();
      if (hook) {
        try {
          hook();
        } catch (const std::exception& ex) {
          line += std::string("; aborting the collective failed too: ") + ex.what();
        }
      }
      if (act) act(line, *this);
      lock.lock();
      break;  // active_ may have changed while unlocked
    }
  }
}

}  // namespace tpl
