// Communicator: the collectives a tensor-parallel linear op needs, over one group of ranks.
//
// Contract shared by every implementation:
//  * All members call the same collective in the same order with the same shapes and dtypes
//    (as with MPI and NCCL). Shapes are validated locally against this contract before any
//    message is sent, so a bad call throws InvalidArgument instead of hanging.
//  * Dim 0 is tokens (rows), dim 1 is features (the last dim). Chunks are contiguous and in
//    member order: chunk i belongs to member i.
//  * Reductions are sums. f32 and int32 are summed natively; bf16 and f16 are converted to f32,
//    summed in f32 and rounded once on the way back ("f32 staging"; see docs/communication.md).
//    int8 supports only data movement (gather, all-to-all, broadcast).
//  * Views may be strided; implementations stage through contiguous buffers when needed.
//  * Async variants return a Work handle; the buffers must stay alive and untouched until
//    wait() returns or test() returns true. Destroying an unfinished Work waits for it.
//  * Device communicators (NCCL) are stream-ordered: a collective runs after everything already
//    enqueued on its runtime's stream, and "complete" (a blocking call's return, wait()) means
//    that later work on that stream sees the result; the host does not block. Host code that
//    reads the result synchronizes the runtime first.
//  * A Communicator is used by one thread at a time.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tpl/tensor.h"

namespace tpl {

class Watchdog;

class Work {
 public:
  virtual ~Work() = default;
  // Blocks until the collective has completed and its output is in place.
  virtual void wait() = 0;
  // Non-blocking progress check; true once complete (the output is then in place).
  virtual bool test() = 0;
};
using WorkPtr = std::unique_ptr<Work>;

// A Work that is already complete (size-1 groups, empty tensors).
class CompletedWork final : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};

enum class Collective { kAllReduce, kReduceScatter, kAllGather, kAllToAll, kBroadcast };

// Bytes this member put on the wire, by the usual per-rank volumes of ring / pairwise
// algorithms (docs/communication.md): all-reduce 2(n-1)/n·S, reduce-scatter (n-1)/n·S_in,
// all-gather (n-1)/n·S_out, all-to-all (n-1)/n·S, broadcast S on the root. 16-bit float sums
// count their f32 staging.
// The bytes one member of a group of n sends for a collective of S bytes (S as above; the
// root's share for a broadcast). Used by Communicator's counters and by the cost model.
double collective_bytes_sent(Collective c, double s, int n, bool is_root = true);

// The host communicators a group can be served by (a plan's per-group choice, tpl/plan.h):
// MPI, or shared memory (SHM within a node, "shm+mpi" when the group spans nodes).
enum class CommKind { kMpi, kShm };
const char* comm_kind_name(CommKind k);  // "mpi", "shm"
// ConfigError naming `where` for anything but "mpi" or "shm".
CommKind parse_comm_kind(const std::string& s, const std::string& where);

struct CommStats {
  double bytes_sent = 0;
  std::int64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Backend name ("local", "mpi", "nccl").
  virtual std::string name() const = 0;
  // Whether `c` on `dtype` is available.
  bool supports(Collective c, DType dtype) const;
  // Whether async collectives make progress without further calls (NCCL, on its stream). MPI's
  // nonblocking collectives progress only inside MPI calls, so overlap needs a CommWorker.
  virtual bool progresses_async() const { return false; }

  // inout <- sum over members of inout.
  void all_reduce(TensorView inout);
  // Writes this member's addend of all_reduce_produced into `dst`, a view of the output's shape
  // and dtype: the output itself, or the communicator's memory (a row-parallel layer's GEMM).
  using Producer = std::function<void(TensorView dst)>;
  // out <- the sum over members of what `produce` writes: the same result, bit for bit, as
  // produce(out) followed by all_reduce(out). A communicator that sums through memory of its own
  // may hand `produce` that memory, so the addend is never copied in: SHM gives the rank's data
  // slot when out fits in one (docs/communication.md). `produce` runs exactly once, on the
  // calling thread, before this member publishes anything; its exception propagates.
  void all_reduce_produced(TensorView out, const Producer& produce);
  // in: [size * R, C]; out: [R, C] = rows [rank*R, (rank+1)*R) of the sum over members.
  void reduce_scatter(TensorView in, TensorView out);
  // dim 0: in [R, C] -> out [size*R, C]; dim 1: in [R, C] -> out [R, size*C].
  void all_gather(TensorView in, TensorView out, int dim);
  // in and out have the same element count, divisible by size. in, taken row-major, is cut
  // into `size` equal pieces; piece k goes to member k; out is the concatenation of the pieces
  // received from members 0..size-1.
  void all_to_all(TensorView in, TensorView out);
  // Unequal pieces: in and out contiguous, of one dtype; in's first send_counts[0] elements go
  // to member 0, the next send_counts[1] to member 1, ...; out is the concatenation of the
  // recv_counts[k] elements received from members k = 0..size-1. Member k's send_counts[rank()]
  // must equal this member's recv_counts[k]; that cannot be checked locally, so callers derive
  // both from one split (FlashComm2's head slices). Blocking only.
  void all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                    const std::vector<std::int64_t>& recv_counts);
  // buf on `root` is copied to every member's buf.
  void broadcast(TensorView buf, int root);
  void barrier();

  WorkPtr iall_reduce(TensorView inout);
  WorkPtr ireduce_scatter(TensorView in, TensorView out);
  WorkPtr iall_gather(TensorView in, TensorView out, int dim);
  WorkPtr iall_to_all(TensorView in, TensorView out);
  WorkPtr ibroadcast(TensorView buf, int root);

  // Collective over this communicator: members passing the same color >= 0 form a new group,
  // ordered by key (ties by current rank). A member passing a negative color gets nullptr.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // split() into a group served by `kind`, whatever serves this one: the planner's choice of
  // communicator per group. Collective over this communicator, like split(). The default serves
  // only this communicator's own kind (kind_name()); MPI and SHM make each other. Unsupported,
  // the same on every member, otherwise (local, NCCL).
  virtual std::unique_ptr<Communicator> split_as(int color, int key, CommKind kind);
  // "mpi" or "shm" (for "shm" and "shm+mpi") when this is one of those kinds, else name().
  std::string kind_name() const;

  // Logical AND of `value` over members (used to make errors and test verdicts agree).
  virtual bool all_true(bool value) = 0;

  // The deadlines this communicator's collectives run under (tpl/watchdog.h); nullptr: none.
  virtual Watchdog* watchdog() const { return nullptr; }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 protected:
  // Implementations receive validated arguments. Blocking defaults call the async form.
  virtual void do_all_reduce(TensorView inout) { do_iall_reduce(inout)->wait(); }
  virtual void do_all_reduce_produced(TensorView out, const Producer& produce) {
    produce(out);
    do_all_reduce(out);
  }
  virtual void do_reduce_scatter(TensorView in, TensorView out) {
    do_ireduce_scatter(in, out)->wait();
  }
  virtual void do_all_gather(TensorView in, TensorView out, int dim) {
    do_iall_gather(in, out, dim)->wait();
  }
  virtual void do_all_to_all(TensorView in, TensorView out) { do_iall_to_all(in, out)->wait(); }
  virtual void do_broadcast(TensorView buf, int root) { do_ibroadcast(buf, root)->wait(); }
  virtual void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts,
                               TensorView out, const std::vector<std::int64_t>& recv_counts) = 0;
  virtual void do_barrier() = 0;

  virtual WorkPtr do_iall_reduce(TensorView inout) = 0;
  virtual WorkPtr do_ireduce_scatter(TensorView in, TensorView out) = 0;
  virtual WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) = 0;
  virtual WorkPtr do_iall_to_all(TensorView in, TensorView out) = 0;
  virtual WorkPtr do_ibroadcast(TensorView buf, int root) = 0;

  // Capability table; the default is the contract above.
  virtual bool do_supports(Collective c, DType dtype) const;

 private:
  void count(Collective c, const TensorView& t, int root = -1);
  CommStats stats_;
  void check_reduce(const char* op, const TensorView& t) const;
  void check_reduce_scatter(const TensorView& in, const TensorView& out) const;
  void check_all_gather(const TensorView& in, const TensorView& out, int dim) const;
  void check_all_to_all(const TensorView& in, const TensorView& out) const;
  void check_all_to_all_v(const TensorView& in, const std::vector<std::int64_t>& send_counts,
                          const TensorView& out,
                          const std::vector<std::int64_t>& recv_counts) const;
  void check_broadcast(const TensorView& buf, int root) const;
};

// Size-1 group: every collective is a copy or a no-op. Needs no MPI.
class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }
  std::unique_ptr<Communicator> split(int color, int key) override;
  bool all_true(bool value) override { return value; }

 protected:
  void do_barrier() override {}
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override;
  WorkPtr do_iall_reduce(TensorView inout) override;
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override;
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override;
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override;
  WorkPtr do_ibroadcast(TensorView buf, int root) override;
};

}  // namespace tpl
