// Device discovery for the CUDA backend. Any error from the runtime (no driver, no device) means
// "no GPU": a CPU-only machine with the toolkit installed must still run the CPU tests.
#include <cuda_runtime.h>

namespace tpl::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace tpl::cuda
