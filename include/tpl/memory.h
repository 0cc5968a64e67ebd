// Host memory, checked before it runs out (docs/errors.md#host-memory).
//
// A decoder stack allocates its weights at construction, then the GEMMs' own copies of them,
// and `tplinear run` adds a one-rank reference of the whole model on one rank per replica. On a
// machine too small the OOM killer would end the job minutes later, with no word. So the stack
// (and the CLI, for everything it adds) estimates what each rank will allocate before it
// allocates anything, the ranks that share a node add their estimates up, and when a node's sum
// exceeds what it has, every rank refuses with the same one-line OutOfMemory: what is needed,
// what is available, and a way out.
//
// Environment:
//   TPL_MEMORY_CHECK      "0" or "off": skip the check (the estimate is then only reported)
//   TPL_MEMORY_AVAILABLE  bytes available, overriding what the machine says (suffixes K, M, G,
//                         T in powers of 1024), for tests and for a budget below the machine's
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpl {

class Communicator;
struct Config;
struct ModelSpec;
struct StackOptions;

// What this process may still allocate: the smaller of /proc/meminfo's MemAvailable and the
// cgroup's limit minus its usage (cgroup v2 memory.max, or v1 memory.limit_in_bytes), or
// TPL_MEMORY_AVAILABLE. `source` names where the number came from.
struct HostMemory {
  double available = 0;  // bytes; < 0 when nothing could be read
  std::string source;
};
HostMemory host_memory_available();

// The same, from the files' contents (tests): meminfo's text, and the cgroup limit and usage
// ("" when absent; "max" means no limit). ConfigError on a malformed TPL_MEMORY_AVAILABLE.
HostMemory host_memory_from(const std::string& meminfo, const std::string& cgroup_limit,
                            const std::string& cgroup_usage, const char* env_override);
double parse_byte_size(const std::string& text, const char* what);  // "3G", "512M", "1000"

// A rank's allocations, by purpose, in bytes.
struct MemoryEstimate {
  struct Item {
    std::string what;  // "weights", "GEMM copies", "one-rank reference", ...
    double bytes = 0;
  };
  std::vector<Item> items;  // held from loading on
  double runtime = 0;       // once per process: JIT code, thread stacks, scratch
  double transient = 0;     // the most held at once for a while: loading a layer, a forward
  void add(const std::string& what, double bytes);
  // `later` is allocated after this one is loaded (`tplinear run`'s one-rank reference after the
  // sharded stack): what it holds joins as `what`, the larger transient counts plus up to
  // 64 MiB of the other (freed blocks that malloc keeps), and the runtime counts once.
  void then(const std::string& what, const MemoryEstimate& later);
  double held() const;
  double total() const { return held() + runtime + transient; }
  std::string describe() const;  // "4.1 GiB = weights 1.2 GiB + GEMM copies 2.4 GiB + ..."
};

// What DecoderStack(world, model, config, weights, options) will allocate on one rank of a
// world of `world_size` ranks, the largest over its ranks (uneven shards): the weight shards
// in their dtype, the GEMMs' copies of them (CpuGemmChooser::held_bytes_per_weight; the
// layer-sharded o_proj's resident layers and windows instead of its weights), norms and biases,
// and the largest transient of loading one layer (a full weight from a seeded source, W8A8's
// full-weight quantisation, the chooser timing two copies side by side). With `tokens` > 0,
// also the activations of a forward of that many rows. Host memory only: a stack on the CUDA
// backend keeps its weights on the device.
MemoryEstimate estimate_stack_memory(const ModelSpec& model, const Config& config,
                                     const StackOptions& options, int world_size,
                                     std::int64_t tokens = 0);

// Collective over `world`: every rank contributes its estimate; the ranks on one node (same
// host name) add theirs up and compare the sum with the least memory any of them sees
// available. If any node falls short, every rank throws the same OutOfMemory naming the node,
// what is needed (the largest rank's items), what is available and `way_out`. `what` names the
// allocation ("the decoder stack"). Does nothing but report under TPL_MEMORY_CHECK=0.
void check_host_memory(Communicator& world, const MemoryEstimate& mine, const std::string& what,
                       const std::string& way_out);

// This process's resident set now and at its peak (VmRSS, VmHWM of /proc/self/status), bytes;
// -1 when unreadable. `tplinear run` reports the estimate next to the peak it reached.
struct ResidentMemory {
  double now = -1, peak = -1;
};
ResidentMemory resident_memory();

}  // namespace tpl
