// Deadlines on every blocking wait of the communicators (docs/errors.md, "Deadlines").
//
// MPI has no per-collective timeout, and a stalled peer leaves the others spinning forever. So
// each process has one Watchdog (owned by MpiSession, handed to every communicator it makes and
// to those split from them): a collective registers while it is in flight (a Scope, from the
// call, or from the post of an async one, until it completes), and a thread checks the
// in-flight ones every 100 ms. One that has run longer than the timeout fires the expiry action
// once, with one line naming this rank, the collective and its sequence number on its group,
// the group and its world ranks, the bytes and the time waited. The default action (MpiSession)
// prints that line, writes the flight recorder as JSON where TPL_DUMP_DIR says, and aborts the
// job (MPI_Abort), so every rank exits non-zero within the deadline plus MPI's teardown.
//
// The flight recorder keeps the last kRing collectives of this process: sequence number, op,
// group, bytes and state (started, completed), so a dump shows how far each rank got.
//
// Settings: TPL_TIMEOUT (seconds, default 300; 0 = no deadline), `tplinear --timeout`.
// Test builds with TPL_FAULT_INJECTION: TPL_FAULT_STALL="<world rank>:<n>" makes that rank stop
// before its n-th watched collective (counted from 1) and sleep until it is killed, so the fault
// tests need no signals and no timing luck. TPL_FAULT_THROW="<world rank>:<n>" makes that rank
// alone throw an IoError there instead (a one-rank failure). A malformed value is a ConfigError
// from MpiSession::world().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tpl {

struct CollectiveRecord {
  std::uint64_t seq = 0;        // this process's watched collectives, from 1
  std::uint64_t group_seq = 0;  // this group's collectives on this rank, from 1
  std::string op;               // "all_reduce", ...
  std::string group;            // e.g. "mpi group of 2 ranks (world ranks 0, 1)"
  std::int64_t bytes = 0;
  bool completed = false;
  double started_s = 0;  // since the watchdog started
  double elapsed_s = 0;  // until completion (or until the dump, while in flight)
};

class Watchdog {
 public:
  static constexpr std::size_t kRing = 64;
  using Expiry = std::function<void(const std::string& line, const Watchdog&)>;

  // timeout_s <= 0: no deadline (nothing is checked; the recorder still records).
  Watchdog(double timeout_s, int world_rank, Expiry on_expiry);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // TPL_TIMEOUT: seconds, a number >= 0; `fallback` when unset. ConfigError otherwise.
  static double timeout_from_env(double fallback = 300);

  void set_timeout(double timeout_s);
  double timeout() const;

  // No deadline until it ends (then the previous one again): for a wait that is long by design,
  // such as ranks waiting while one computes a one-rank reference. A rank that dies meanwhile
  // still ends the job through mpirun; one that stalls is not caught.
  class Suspension {
   public:
    explicit Suspension(Watchdog* wd) : wd_(wd), was_(wd ? wd->timeout() : 0) {
      if (wd_) wd_->set_timeout(0);
    }
    ~Suspension() {
      if (wd_) wd_->set_timeout(was_);
    }
    Suspension(const Suspension&) = delete;
    Suspension& operator=(const Suspension&) = delete;

   private:
    Watchdog* wd_;
    double was_;
  };
  int world_rank() const { return world_rank_; }

  // One in-flight collective; ends on destruction or end(). Movable (an async Work owns it).
  class Scope {
   public:
    Scope() = default;
    Scope(Scope&& o) noexcept : wd_(o.wd_), id_(o.id_) { o.wd_ = nullptr; }
    Scope& operator=(Scope&& o) noexcept;
    ~Scope() { end(); }
    void end();

   private:
    friend class Watchdog;
    Scope(Watchdog* wd, std::uint64_t id) : wd_(wd), id_(id) {}
    Watchdog* wd_ = nullptr;
    std::uint64_t id_ = 0;
  };
  // `group` must outlive the scope (the communicator's description); `group_seq` is the
  // communicator's own count. With TPL_FAULT_STALL matching, this call never returns.
  Scope watch(const char* op, const std::string* group, std::uint64_t group_seq,
              std::int64_t bytes);

  // The flight recorder, oldest first, with the in-flight entries' elapsed time filled in.
  std::vector<CollectiveRecord> records() const;
  // The recorder as JSON text (one object: rank, timeout, records).
  std::string dump_json() const;

 private:
  struct Entry {
    std::uint64_t id;
    std::chrono::steady_clock::time_point start;
    std::size_t record;  // its record's number (from 0); overwritten once kRing newer exist
    bool fired;
  };
  void finish(std::uint64_t id);
  void loop();
  double since_start(std::chrono::steady_clock::time_point t) const;

  const int world_rank_;
  Expiry on_expiry_;
  const std::chrono::steady_clock::time_point t0_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  double timeout_s_;
  bool stop_ = false;
  std::uint64_t next_id_ = 0;  // also the process-wide sequence number
  std::vector<Entry> active_;
  // Circular, kRing slots reused in place (their strings keep their capacity, so recording
  // allocates nothing after the first lap); record n (from 0) lives in ring_[n % kRing].
  std::vector<CollectiveRecord> ring_;
  std::size_t recorded_ = 0;    // records ever written
  std::uint64_t stall_at_ = 0;  // TPL_FAULT_STALL for this rank; 0 = none
  std::uint64_t throw_at_ = 0;  // TPL_FAULT_THROW for this rank; 0 = none
  std::thread thread_;
};

}  // namespace tpl
