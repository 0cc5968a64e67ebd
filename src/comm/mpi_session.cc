#include "comm/mpi_communicator.h"

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "comm/node_layout.h"
#include "comm/progress_board.h"
#include "tpl/backends.h"
#include "tpl/error.h"
#include "tpl/shm.h"

namespace tpl {
namespace {

// How long the reporting rank waits for the other ranks of its host to write their flight
// recorders before it aborts the job (each answers within a watchdog tick, 100 ms).
constexpr double kDumpWaitSeconds = 2;

// The deadline's action: one line, the flight recorders if asked for, then the whole job goes.
void on_expiry(const std::string& line, const Watchdog& wd) {
  std::string where;
  if (const std::string dir = wd.dump_dir(); !dir.empty()) {
    const std::string path = wd.write_dump();
    where = path.empty() ? "; cannot write the flight recorder to " + dir
                         : "; flight recorder: " + path;
    if (ProgressBoard* board = wd.board()) {
      const std::vector<int> silent = board->await_dumps(board->request_dumps(), kDumpWaitSeconds);
      where += ", the other ranks' of this host beside it";
      if (!silent.empty()) {
        where += " (none from world rank";
        where += silent.size() > 1 ? "s" : "";
        for (std::size_t i = 0; i < silent.size(); ++i)
          where += (i ? ", " : " ") + std::to_string(silent[i]);
        where += ")";
      }
      where += "; merge them with tplinear analyze";
    }
  }
  std::fprintf(stderr, "tplinear: error: %s%s; aborting the job\n", line.c_str(), where.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);  // MPI_Abort does not return; if it did, the job must still end
}

// LeakSanitizer and OpenMPI 4.1, which never frees about 120 KB of what MPI_Init allocates,
// nor a little of what its progress threads and MPI_Finalize do (docs/errors.md "Sanitizers").
// What this thread allocates inside MPI_Init is not reported, and the leak check runs just
// before MPI_Finalize instead of at exit: by then every object of tplinear's is gone or
// reachable, and OpenMPI's finalization is left out. Narrower than suppression patterns, which
// would need stacks that OpenMPI's missing frame pointers give only to the slow unwinder
// (ops_np2 took 58 s with it instead of 5 s).
struct MpiInitLeaksIgnored {
#if defined(__SANITIZE_ADDRESS__)
  MpiInitLeaksIgnored() {
    __lsan_disable();
  }
  ~MpiInitLeaksIgnored() {
    __lsan_enable();
  }
#endif
};
void check_leaks_before_finalize() {
#if defined(__SANITIZE_ADDRESS__)
  __lsan_do_leak_check();  // ends the process on a leak; the at-exit check then does not run
#endif
}

// The host's progress board in a shared window (comm/progress_board.h). Allocated once per
// session over the world's ranks of this host; freeing it is collective over them too.
class WindowBoard final : public ProgressBoard {
 public:
  // nullptr where the window cannot be had (the diagnostics then say less; nothing fails).
  static std::unique_ptr<WindowBoard> make(int world_rank) {
    MPI_Comm host = MPI_COMM_NULL;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL,
                            &host) != MPI_SUCCESS)
      return nullptr;
    MPI_Comm_set_errhandler(host, MPI_ERRORS_RETURN);
    int rank = 0, size = 1;
    MPI_Comm_rank(host, &rank);
    MPI_Comm_size(host, &size);
    std::vector<int> world_ranks(static_cast<std::size_t>(size));
    MPI_Win win = MPI_WIN_NULL;
    void* mine = nullptr;
    const auto bytes = static_cast<MPI_Aint>(ShmProgressBoard::bytes_for(size));
    bool ok = size <= ShmProgressBoard::kMaxRows &&
              MPI_Allgather(&world_rank, 1, MPI_INT, world_ranks.data(), 1, MPI_INT, host) ==
                  MPI_SUCCESS &&
              MPI_Win_allocate_shared(rank == 0 ? bytes + 64 : 0, 1, MPI_INFO_NULL, host, &mine,
                                      &win) == MPI_SUCCESS;
    // The window's base is only 8-byte aligned under OpenMPI (UBSan: the 64-aligned rows'
    // "misaligned address"), so the board starts at the next 64 bytes. The mapping's offset
    // within its page is the same on every rank; checked below, not assumed.
    std::byte* base = nullptr;
    int pad = 0;
    if (ok) {
      MPI_Aint got = 0;
      int unit = 0;
      void* at = nullptr;
      ok = MPI_Win_shared_query(win, 0, &got, &unit, &at) == MPI_SUCCESS && got >= bytes + 64;
      pad = ok ? static_cast<int>((64 - reinterpret_cast<std::uintptr_t>(at) % 64) % 64) : 0;
      base = static_cast<std::byte*>(at) + pad;
    }
    if (ok && rank == 0) ShmProgressBoard::init(base, size);
    // Every rank agrees on the outcome and the padding, and nobody reads the board before it is
    // laid out.
    int v[3] = {ok ? 0 : 1, pad, -pad};  // max: anyone failed, the largest and smallest pad
    if (MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT, MPI_MAX, host) != MPI_SUCCESS) v[0] = 1;
    const bool all_ok = v[0] == 0 && v[1] == -v[2];
    MPI_Comm_free(&host);
    if (!all_ok) {
      if (win != MPI_WIN_NULL) MPI_Win_free(&win);
      return nullptr;
    }
    return std::unique_ptr<WindowBoard>(new WindowBoard(win, base, std::move(world_ranks), rank));
  }
  ~WindowBoard() override {
    int finalized = 0;
    MPI_Finalized(&finalized);  // a caller that owns MPI may have ended it first
    if (!finalized) MPI_Win_free(&win_);
  }

  void joined(std::uint64_t key, std::uint64_t seq, const char* op) override {
    board_.joined(key, seq, op);
  }
  void completed(std::uint64_t key, std::uint64_t seq) override { board_.completed(key, seq); }
  void forget(std::uint64_t key) override { board_.forget(key); }
  std::string report(std::uint64_t key, std::uint64_t seq,
                     const std::vector<int>& ranks) const override {
    return board_.report(key, seq, ranks);
  }
  std::uint64_t request_dumps() override { return board_.request_dumps(); }
  std::uint64_t pending_dump(std::uint64_t seen) const override {
    return board_.pending_dump(seen);
  }
  void dumped(std::uint64_t request) override { board_.dumped(request); }
  std::vector<int> await_dumps(std::uint64_t request, double seconds) override {
    return board_.await_dumps(request, seconds);
  }

 private:
  WindowBoard(MPI_Win win, void* base, std::vector<int> world_ranks, int mine)
      : win_(win), board_(base, std::move(world_ranks), mine) {}
  MPI_Win win_;
  ShmProgressBoard board_;
};

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    [[maybe_unused]] const MpiInitLeaksIgnored ignored;  // does something only under LSan
    TPL_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &thread_level_), -1);
    owns_ = true;
  } else {
    MPI_Query_thread(&thread_level_);
  }
  // Errors come back as return codes, which TPL_MPI_CHECK turns into CommError.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  double timeout = 300;
  try {
    timeout = Watchdog::timeout_from_env(timeout);
  } catch (const ConfigError& e) {
    timeout_error_ = e.what();  // thrown by world(), where the caller handles errors
  }
  try {
    watchdog_ = std::make_unique<Watchdog>(timeout, rank, on_expiry);
  } catch (const ConfigError& e) {  // a malformed TPL_FAULT_* setting
    timeout_error_ = e.what();
  }
  if (watchdog_) {
    if (const char* dir = std::getenv("TPL_DUMP_DIR"); dir && *dir) watchdog_->set_dump_dir(dir);
    // Only where this session started MPI (the CLI, tpl_stress, the test mains): the board is
    // collective over the world's ranks of the host, when made and when freed, and a session
    // attached to the caller's MPI may be made on some ranks only, or freed at a different
    // point on each (a Python World, collected when its last reference goes).
    if (owns_) {
      board_ = WindowBoard::make(rank);
      board_tried_ = true;
    }
    watchdog_->set_board(board_.get());
  }
  // Once per process, over the world's ranks of each host, so that every group agrees on which
  // ranks share a node however it was split (comm/node_layout.h). Every rank reads the same
  // setting, so every rank takes part in the collective or none does.
  try {
    node_part_ = node_part_of_process(MPI_COMM_WORLD, node_split_from_env());
  } catch (const ConfigError& e) {
    if (timeout_error_.empty()) timeout_error_ = e.what();
  }
}

MpiSession::~MpiSession() {
  // MPI_Win_free and MPI_Finalize wait for every rank; a stalled peer would hold this one here
  // forever.
  std::string what = owns_ ? "MPI_Finalize of the world" : "the end of the MPI session";
  Watchdog::Scope s = watchdog_ ? watchdog_->watch("finalize", &what, 1, 0) : Watchdog::Scope();
  if (watchdog_) watchdog_->set_board(nullptr);
  board_.reset();
  if (owns_) {
    check_leaks_before_finalize();
    MPI_Finalize();
  }
}

bool MpiSession::start_progress_board() {
  // A bad setting (the same environment on every rank) stops every rank before the collective.
  if (!timeout_error_.empty()) throw ConfigError(timeout_error_);
  if (!board_tried_) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    board_tried_ = true;
    board_ = WindowBoard::make(rank);
    watchdog_->set_board(board_.get());
  }
  return board_ != nullptr;
}

std::unique_ptr<MpiCommunicator> MpiSession::dup_of(int fortran_handle) const {
  if (!timeout_error_.empty()) throw ConfigError(timeout_error_);
  const MPI_Comm comm = MPI_Comm_f2c(fortran_handle);
  TPL_CHECK_T(comm != MPI_COMM_NULL, ConfigError, (Where{"MpiSession"}),
              "the MPI communicator given (Fortran handle ", fortran_handle, ") is MPI_COMM_NULL");
  MPI_Comm dup;
  TPL_MPI_CHECK(MPI_Comm_dup(comm, &dup), -1);
  return std::make_unique<MpiCommunicator>(dup, watchdog_.get(), node_part_);
}

std::unique_ptr<Communicator> MpiSession::mpi_world() const {
  return dup_of(MPI_Comm_c2f(MPI_COMM_WORLD));
}

std::unique_ptr<Communicator> MpiSession::world(std::string* why) const {
  return world_of(MPI_Comm_c2f(MPI_COMM_WORLD), why);
}

std::unique_ptr<Communicator> MpiSession::world_of(int mpi_comm_fortran_handle,
                                                   std::string* why) const {
  std::unique_ptr<MpiCommunicator> mpi = dup_of(mpi_comm_fortran_handle);
  // TPL_COMM: which communicator serves the world and every group split from it
  // (docs/communication.md).
  const char* env = std::getenv("TPL_COMM");
  const std::string comm = env && *env ? env : "auto";
  auto say = [&](const std::string& s) {
    if (why) *why = s;
  };
  if (comm == "mpi") {
    say("mpi (TPL_COMM=mpi)");
    return mpi;
  }
  if (comm == "shm") {
    auto shm = make_shm_communicator(*mpi);
    say(shm->name() + " (TPL_COMM=shm)");
    return shm;
  }
  if (comm != "auto")
    TPL_THROW(ConfigError, (Where{"TPL_COMM", mpi->rank()}),
              "TPL_COMM must be mpi, shm or auto, got '", comm, "'");
  // auto: SHM when the ranks of each host have a CPU each, within one node or, with each
  // node's ranks consecutive, as shm+mpi across nodes. SHM waits spin (then yield), which costs
  // nothing on a core of one's own and steals time from a peer's GEMM when ranks outnumber the
  // CPUs; MPI's blocking paths are then the better neighbour.
  MPI_Comm host = MPI_COMM_NULL;
  TPL_MPI_CHECK(
      MPI_Comm_split_type(mpi->handle(), MPI_COMM_TYPE_SHARED, mpi->rank(), MPI_INFO_NULL, &host),
      mpi->rank());
  int host_size = 0;
  MPI_Comm_size(host, &host_size);
  MPI_Comm_free(&host);
  const NodeLayout layout = node_layout(*mpi);
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  const bool own_cpu = mpi->all_true(cpus >= host_size);
  const std::string ranks = std::to_string(mpi->size()) + " rank" + (mpi->size() > 1 ? "s" : "");
  const std::string where = layout.nodes == 1 ? "on one node" : "on " + layout.describe();
  if (mpi->size() > 1 && own_cpu && layout.consecutive) {
    try {
      auto shm = make_shm_communicator(*mpi);
      say(shm->name() + " (TPL_COMM=auto: " + ranks + " " + where + ", " + std::to_string(cpus) +
          " CPUs)");
      return shm;
    } catch (const ConfigError& e) {
      // make_shm_communicator fails alike on every rank (its checks are agreed), so every rank
      // falls back together.
      say(std::string("mpi (TPL_COMM=auto: the shared window failed: ") + e.what() + ")");
      return mpi;
    }
  }
  say(mpi->size() == 1 ? "mpi (TPL_COMM=auto: one rank, nothing to share)"
      : !layout.consecutive
          ? "mpi (TPL_COMM=auto: " + ranks + " " + where + ", a node's ranks not consecutive)"
          : "mpi (TPL_COMM=auto: " + std::to_string(host_size) + " ranks on a host of " +
                std::to_string(cpus) + " CPUs; SHM's spinning waits would share cores)");
  return mpi;
}

}  // namespace tpl
