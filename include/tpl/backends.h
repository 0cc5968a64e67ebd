// The one place that knows which backends this build contains. Callers ask for a backend by
// kind; the registry constructs it or throws Unsupported naming what was not built.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/gemm.h"
#include "tpl/runtime.h"

namespace tpl {

enum class GemmBackend { kReference, kOneDnn, kCublasLt };

const char* gemm_backend_name(GemmBackend b);
GemmBackend parse_gemm_backend(const std::string& s);
std::vector<GemmBackend> available_gemm_backends();
// The fastest CPU backend of this build (oneDNN when built, else the reference).
GemmBackend default_cpu_gemm_backend();

// weight: [desc.n, desc.k]; bias: [1, desc.n] or an empty view (no bias). `rt`: the runtime
// whose tensors the GEMM will run on; cuBLASLt enqueues on the CUDA runtime's stream (stream 0
// when rt is null), the host backends ignore it.
std::unique_ptr<Gemm> make_gemm(GemmBackend backend, const GemmDesc& desc, TensorView weight,
                                TensorView bias, Runtime* rt = nullptr);

// The runtime for `device`: the host runtime, or a CUDA runtime on the current device (its own
// compute stream and memory pool). Unsupported when the device's backend is not built.
std::unique_ptr<Runtime> make_runtime(Device device);
// Communicator for tensors of `rt`'s device over the ranks of `bootstrap`: for the host, a
// duplicate of `bootstrap` itself; for CUDA, an NCCL communicator ordered with rt's stream (the
// call is collective over `bootstrap`, which carries the NCCL id).
std::unique_ptr<Communicator> make_device_communicator(Communicator& bootstrap, Runtime& rt);

// Owns MPI's lifetime for a program: MPI_Init_thread on construction (requesting
// MPI_THREAD_MULTIPLE), MPI_Finalize on destruction. Create exactly one, in main().
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  // Communicator over MPI_COMM_WORLD (a duplicate, so library traffic never mixes with the
  // caller's).
  std::unique_ptr<Communicator> world() const;
  int thread_level() const { return thread_level_; }

 private:
  int thread_level_ = 0;
  bool owns_ = false;
};

std::vector<std::string> built_backends();  // e.g. {"local", "mpi", "reference", "onednn"}

}  // namespace tpl
