// CommWorker: one background thread that runs a group's collectives in submission order, so a
// fused op can compute GEMM chunk k+1 while chunk k's collective runs.
//
// Why a thread: OpenMPI's nonblocking collectives only advance inside MPI calls (platform-notes
// §2.6), and a oneDNN GEMM makes none, so MPI_I* alone would not overlap with a GEMM. The worker
// calls the blocking collectives itself; the caller's thread does no MPI while work is pending.
// The caller owns the worker (no globals) and passes it to the ops through OpEnv.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace tpl {

class Communicator;

class CommWorker {
 public:
  CommWorker();
  ~CommWorker();  // drains the queue, joins the thread
  CommWorker(const CommWorker&) = delete;
  CommWorker& operator=(const CommWorker&) = delete;

  // Queues `task`; tasks run one at a time, in order. Returns its ticket for wait().
  std::uint64_t submit(std::function<void()> task);
  // Blocks until the task with this ticket (and every earlier one) has run; rethrows the first
  // exception a task threw.
  void wait(std::uint64_t ticket);
  // Whether the task with this ticket has run (does not block, does not rethrow).
  bool finished(std::uint64_t ticket);
  // Blocks until every submitted task has run; rethrows the first exception a task threw.
  void drain();

 private:
  void loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::size_t pending_ = 0;
  std::uint64_t submitted_ = 0, completed_ = 0;
  std::exception_ptr error_;
  bool stop_ = false;
  std::thread thread_;
};

// Whether a CommWorker would get a core of its own beside a rank's GEMM threads: a rank may use
// `usable_cores` (its share of the host) and runs `gemm_threads`. Config::overlap = auto runs
// the fused paths' overlap only then.
bool worker_has_spare_core(int usable_cores, int gemm_threads);
// The same for this rank: usable = min(the cores its affinity allows, the host's cores / the
// ranks of `world` on this host), GEMM threads = omp_get_max_threads(). Collective over
// `world`: it compares host names to count the ranks per host, and is true only when it holds
// on every rank, so all ranks run the same collectives.
bool worker_has_spare_core(Communicator& world);

}  // namespace tpl
