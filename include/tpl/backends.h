// The one place that knows which backends this build contains. Callers ask for a backend by
// kind; the registry constructs it or throws Unsupported naming what was not built.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/cpu_gemm.h"
#include "tpl/gemm.h"
#include "tpl/runtime.h"
#include "tpl/watchdog.h"

namespace tpl {

// kCpu: the ISA-aware list of CPU implementations (tpl/cpu_gemm.h, docs/gemm.md), the default;
// kReference / kOneDnn: one implementation, for tests and benchmarks (oneDNN refuses what it
// cannot do exactly on this CPU, e.g. int8 without VNNI); kCublasLt: the GPU.
enum class GemmBackend { kReference, kOneDnn, kCpu, kCublasLt };

const char* gemm_backend_name(GemmBackend b);
GemmBackend parse_gemm_backend(const std::string& s);
std::vector<GemmBackend> available_gemm_backends();
// The CPU backend layers use unless told otherwise: kCpu.
GemmBackend default_cpu_gemm_backend();

// weight: [desc.n, desc.k]; bias: [1, desc.n] or an empty view (no bias). `rt`: the runtime
// whose tensors the GEMM will run on; cuBLASLt enqueues on the CUDA runtime's stream (stream 0
// when rt is null), the host backends ignore it. `chooser`: for kCpu, the chooser whose cache
// and options to use; without one, a chooser of the environment's options picks in list order
// (TPL_GEMM_SELECT=measure to time instead).
std::unique_ptr<Gemm> make_gemm(GemmBackend backend, const GemmDesc& desc, TensorView weight,
                                TensorView bias, Runtime* rt = nullptr,
                                CpuGemmChooser* chooser = nullptr);

// The runtime for `device`: the host runtime, or a CUDA runtime on the current device (its own
// compute stream and memory pool). Unsupported when the device's backend is not built.
std::unique_ptr<Runtime> make_runtime(Device device);
// Communicator for tensors of `rt`'s device over the ranks of `bootstrap`: for the host, a
// duplicate of `bootstrap` itself; for CUDA, an NCCL communicator ordered with rt's stream (the
// call is collective over `bootstrap`, which carries the NCCL id).
std::unique_ptr<Communicator> make_device_communicator(Communicator& bootstrap, Runtime& rt);

// Owns MPI's lifetime for a program: MPI_Init_thread on construction (requesting
// MPI_THREAD_MULTIPLE), MPI_Finalize on destruction. Create exactly one, in main(). Where the
// program (or mpi4py) has initialised MPI already, the session attaches to it and leaves the
// finalisation to its owner.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  MpiSession() : MpiSession(nullptr, nullptr) {}
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  // Communicator over MPI_COMM_WORLD (a duplicate, so library traffic never mixes with the
  // caller's); every group split from it is of the same kind. TPL_COMM picks it: mpi, shm, or
  // auto (the default): SHM when the ranks of each node have a CPU each, MPI otherwise; a world
  // spanning nodes gets SHM within each node and MPI between them ("shm+mpi",
  // docs/communication.md). TPL_NODE_SPLIT=k treats each host as k nodes. Collective. `why`, if
  // given, receives the choice and its reason, e.g. "shm (TPL_COMM=auto: 2 ranks on one node, 2
  // CPUs)".
  std::unique_ptr<Communicator> world(std::string* why = nullptr) const;
  // The same over a communicator of the caller's (an engine's TP group, mpi4py's comm.py2f()),
  // given by its Fortran handle (MPI_Comm_c2f) so that this header needs no mpi.h; tpl/mpi.h
  // has the MPI_Comm overload. The communicator is duplicated: library traffic never mixes
  // with the caller's, and the caller may free its own. ConfigError for MPI_COMM_NULL.
  std::unique_ptr<Communicator> world_of(int mpi_comm_fortran_handle,
                                         std::string* why = nullptr) const;
  // The MPI communicator over MPI_COMM_WORLD (a duplicate), whatever TPL_COMM says: for
  // benchmarks that compare communicators and for building one over it.
  std::unique_ptr<Communicator> mpi_world() const;
  int thread_level() const { return thread_level_; }
  // The deadlines of every communicator this session makes (tpl/watchdog.h): TPL_TIMEOUT at
  // first, set_timeout() after (the CLI's --timeout). On expiry it prints one line on stderr,
  // names the members that never joined the collective (from the host's progress board, made
  // by a session that initialised MPI itself, or by start_progress_board()), writes
  // the flight recorders of this host's ranks to $TPL_DUMP_DIR/tplinear-flight-rank<r>.json if
  // that is set, and aborts the job (MPI_Abort, exit code 3).
  Watchdog& watchdog() const { return *watchdog_; }
  // The host's progress board for a session attached to the caller's MPI (an engine's, a
  // Python World's), which does not make one by itself: its window's making and freeing are
  // collective. Collective over MPI_COMM_WORLD: every rank calls it, at the same point. Once
  // made, destroying the session is collective over each host's ranks as well (it frees the
  // window): destroy it at the same point on every rank, before MPI_Finalize (after it, the
  // free is skipped). Returns whether this host has a board, false alike on its ranks where the
  // window cannot be had. Where the board was already attempted (at construction, by a session
  // that initialised MPI itself, or by an earlier call), it returns that outcome and
  // communicates nothing. ConfigError for a bad TPL_* setting, alike on every rank.
  bool start_progress_board();

 private:
  int thread_level_ = 0;
  bool owns_ = false;
  std::unique_ptr<class MpiCommunicator> dup_of(int fortran_handle) const;
  std::string timeout_error_;  // a bad TPL_TIMEOUT, reported by world() (a ConfigError)
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<ProgressBoard> board_;  // this host's (comm/progress_board.h); may be null
  bool board_tried_ = false;              // made, or attempted: never collective twice
  int node_part_ = 0;  // this process's TPL_NODE_SPLIT part of its host (comm/node_layout.h)
};

// The MPI library's own version string (MPI_Get_library_version), or "not built".
std::string mpi_library_version();

// e.g. {"local", "mpi", "reference", "avx2_int8", "bf16_via_f32", "onednn", "openblas"}
std::vector<std::string> built_backends();

}  // namespace tpl
