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
// group, bytes and state (started, completed), so a dump shows how far each rank got;
// `tplinear analyze` merges the ranks' dumps (tpl/flight_analysis.h).
//
// With a ProgressBoard (MpiSession gives one per host), every collective is also published
// there, and the expiry line says, per member of the group, whether it never joined the
// collective, joined and did not finish, or sits on another host where nothing is known.
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
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tpl {

struct CollectiveRecord {
  std::uint64_t seq = 0;        // this process's watched collectives, from 1
  std::uint64_t group_seq = 0;  // this group's collectives on this rank, from 1
  std::uint64_t group_key = 0;  // Watchdog::register_group's key; 0: not registered
  std::string op;               // "all_reduce", ...
  std::string group;            // e.g. "mpi group of 2 ranks (world ranks 0, 1)"
  std::int64_t bytes = 0;
  bool completed = false;
  double started_s = 0;  // since the watchdog started
  double elapsed_s = 0;  // until completion (or until the dump, while in flight)
};

// Where the ranks of a host publish how far each got on each group (comm/progress_board.h).
// The writers are called under the watchdog's lock; the readers may run on any thread.
class ProgressBoard {
 public:
  virtual ~ProgressBoard() = default;
  // This rank joined, or completed, collective #group_seq of the group with key `key`.
  virtual void joined(std::uint64_t key, std::uint64_t group_seq, const char* op) = 0;
  virtual void completed(std::uint64_t key, std::uint64_t group_seq) = 0;
  // The group is gone: its slot may be reused (its last state stays readable until then).
  virtual void forget(std::uint64_t key) = 0;
  // One clause saying where each of `world_ranks` stands on that collective, e.g. "never
  // joined: rank 1 (at #6 of this group; last: all_gather #3 of another group, in flight);
  // joined, not finished: rank 0". Empty when nothing is known.
  virtual std::string report(std::uint64_t key, std::uint64_t group_seq,
                             const std::vector<int>& world_ranks) const = 0;
  // Asks every rank on the board to write its flight recorder; returns the request's number.
  virtual std::uint64_t request_dumps() = 0;
  // The newest request after `seen`, or 0.
  virtual std::uint64_t pending_dump(std::uint64_t seen) const = 0;
  virtual void dumped(std::uint64_t request) = 0;
  // For a rank that has written its own recorder: waits up to `seconds` for the other ranks on
  // the board to acknowledge `request` (answering theirs meanwhile); returns the world ranks
  // that did not.
  virtual std::vector<int> await_dumps(std::uint64_t request, double seconds) = 0;
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
  // communicator's own count; `group_key` is register_group's (0: not published on the board).
  // With TPL_FAULT_STALL matching, this call never returns.
  Scope watch(const char* op, const std::string* group, std::uint64_t group_seq, std::int64_t bytes,
              std::uint64_t group_key = 0);

  // A collective whose completion the watchdog polls, for a communicator whose calls return
  // before the work is done (NCCL: the host enqueues, the GPU finishes later; tpl/cuda.h).
  // `done` runs on the watchdog's thread every tick, and in poll(), with the watchdog's lock
  // held: it must be quick, must not call the watchdog, and returns true once the collective
  // has completed or failed (a failure is reported where the result is used). `on_expiry`, if
  // set, runs once when the deadline passes, before the watchdog's action (NCCL: ncclCommAbort,
  // which makes the kernels stuck on a peer return). Counted, recorded, published and
  // fault-injected like watch(); with TPL_FAULT_STALL matching, this call never returns.
  void watch_until(const char* op, const std::string* group, std::uint64_t group_seq,
                   std::int64_t bytes, std::uint64_t group_key, std::function<bool()> done,
                   std::function<void()> on_expiry = {});
  // Polls the watch_until() collectives now and retires those done (a communicator calls it
  // once its stream is drained, so nothing of it outlives it); returns how many are in flight.
  std::size_t poll();

  // A communicator's key for the board and the dumps: the same on every member, since members
  // create their communicators over a given set of ranks in the same order (the key is the name
  // hashed with how many groups of that name this process registered before). Never 0.
  std::uint64_t register_group(const std::string& name, const std::vector<int>& world_ranks);
  // The group is gone (its communicator's destructor): its board slot may be reused, and it is
  // dropped from the dumps once kKeptGroups newer ones have gone too.
  void unregister_group(std::uint64_t key);
  static constexpr std::size_t kKeptGroups = 64;

  // The board collectives are published on (not owned; it must outlive the watchdog's use of
  // it, or be unset first). nullptr: none.
  void set_board(ProgressBoard* board);
  ProgressBoard* board() const;
  // Where flight recorders are written (TPL_DUMP_DIR), also when another rank asks through
  // the board; empty: nowhere.
  void set_dump_dir(std::string dir);
  std::string dump_dir() const;
  // Writes dump_json() to <dir>/tplinear-flight-rank<r>.json; returns the path, or "" if the
  // file could not be written (or there is no dump dir).
  std::string write_dump() const;

  // The flight recorder, oldest first, with the in-flight entries' elapsed time filled in.
  std::vector<CollectiveRecord> records() const;
  // The recorder as JSON text (one object: rank, host, timeout, the wall-clock time the
  // watchdog started, the groups registered and the records).
  std::string dump_json() const;

 private:
  struct Entry {
    std::uint64_t id;
    std::chrono::steady_clock::time_point start;
    std::size_t record;  // its record's number (from 0); overwritten once kRing newer exist
    bool fired;
    std::uint64_t group_key, group_seq;
    std::function<bool()> done;       // watch_until(): polled; empty: ends with its Scope
    std::function<void()> on_expiry;  // watch_until(): runs before the action
  };
  struct Group {
    std::uint64_t key;
    std::string name;
    std::vector<int> world_ranks;
    bool alive;
  };
  // Records collective `op` as started and returns its id; stalls or throws where the fault
  // injection says so. Locks.
  std::uint64_t begin(const char* op, const std::string* group, std::uint64_t group_seq,
                      std::int64_t bytes, std::uint64_t group_key, std::function<bool()> done,
                      std::function<void()> on_expiry);
  void finish(std::uint64_t id);
  void finish_locked(std::vector<Entry>::iterator it);
  std::size_t poll_locked();
  void loop();
  double since_start(std::chrono::steady_clock::time_point t) const;

  const int world_rank_;
  Expiry on_expiry_;
  const std::chrono::steady_clock::time_point t0_;
  const double wall_t0_;  // seconds since the epoch at t0_ (dumps of several ranks line up)
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
  std::vector<Group> groups_;
  std::map<std::string, std::uint64_t> name_counts_;  // groups registered per name, ever
  ProgressBoard* board_ = nullptr;
  std::string dump_dir_;
  std::uint64_t dump_seen_ = 0;  // the last dump request of the board answered
  bool dumping_ = false;         // the thread answers one, unlocked, with board_
  std::thread thread_;
};

}  // namespace tpl
