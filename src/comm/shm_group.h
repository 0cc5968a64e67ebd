// The MPI-free core of the shared-memory communicator (shm_communicator.h): one member's view of
// a group whose members share memory, and the collectives through that memory. Who owns the
// memory is not its concern: ShmCommunicator maps an MPI-3 shared window, the thread harness
// (tests/comm/shm_tsan_test.cc) one heap buffer, so ThreadSanitizer can check the
// synchronisation below, which it cannot across processes.
//
// Layout: each member's base holds a control line (alone on a kControlBytes page) and two pairs
// of data/result slots of ShmOptions::slot_bytes; collectives move data through the slots in
// chunks, so any message size runs in a fixed amount of shared memory.
//
// Synchronisation: each chunk is a "round". A member writes its part into its slot of parity
// round % 2, then stores the round number into its control line with release order; readers
// load every member's line with acquire order until it reaches the round, so the writes
// happen-before the reads. A slot of parity p is written again two rounds later, only after the
// writer has seen every member arrive at the round in between, i.e. after every reader finished
// with it. Waits spin briefly, then yield, and give up after a deadline with a CommError that
// names the collective and the members that have not arrived.
//
// Sums: every element is summed in member order 0, 1, ..., n-1 (shm_reduce.h), whatever the
// size, chunking or algorithm (one-shot below ShmOptions::two_shot_bytes, reduce-scatter +
// all-gather above), so results are identical on every member and between fused and unfused
// paths.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tpl/cpu_isa.h"
#include "tpl/dtype.h"
#include "tpl/shm.h"

namespace tpl {

class ShmGroup {
 public:
  static constexpr std::size_t kControlBytes = 4096;  // one page: the control line, alone
  static constexpr int kMaxMembers = 64;              // shm_reduce's tail arrays

  // Bytes at each member's base: the control page and four slots.
  static std::size_t member_bytes(std::size_t slot_bytes) { return kControlBytes + 4 * slot_bytes; }
  // Every round moves at least one element of up to 4 bytes per member through a slot (the
  // n-block collectives split it n ways), so a smaller slot would never advance: a hang.
  static constexpr std::size_t kMinSlotBytes = 4096;
  static bool slot_bytes_ok(std::size_t b) { return b >= kMinSlotBytes && b % 64 == 0; }
  // Constructs the control line at a member's base (page-aligned, member_bytes long). Every
  // member's line must be constructed, and that seen by every member, before any collective.
  static void init_member(void* base);

  // Seconds the next wait may take (called once per round); ShmOptions::timeout_s when empty.
  using Timeout = std::function<double()>;

  // Member `rank` of the group whose members' memory starts at `bases` (in member order; this
  // process or thread must be able to address every one). `description` ends its errors, e.g.
  // "shm group of 2 ranks (world ranks 0, 1)". InvalidArgument for more than kMaxMembers
  // members or a rank out of range.
  ShmGroup(std::vector<std::byte*> bases, int rank, const ShmOptions& options, CpuIsa isa,
           std::string description, Timeout timeout = {});
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& description() const { return desc_; }

  // The collectives, on contiguous buffers; every member calls them in the same order with the
  // same shapes. Sizes are element counts of `dt`.
  // In place: data = the members' sum.
  void all_reduce(std::byte* data, std::size_t count, DType dt);
  // The all-reduce of an addend that is already in this member's data slot: the caller wrote
  // `count` elements (count * dtype_size(dt) <= slot_bytes) at addend_slot(), and the members'
  // sum goes to `out`. The sum, algorithm and rounding are all_reduce's, so the result is the
  // same bit for bit; only all_reduce's copy-in is gone. Every member calls it (not mixed with
  // all_reduce for the same collective).
  std::byte* addend_slot() const { return slot(rank_, 0, next_round()); }
  void all_reduce_addend(std::byte* out, std::size_t count, DType dt);
  // `in` holds size() blocks of `block` elements; `out` (block elements) = the sum of the
  // members' blocks rank().
  void reduce_scatter(const std::byte* in, std::byte* out, std::size_t block, DType dt);
  // `in`: `count` elements, rows of `cols`; `out`: size() * count. dim 0 stacks the members'
  // rows, dim 1 their columns (member k's row i is out's row i, columns [k*cols, (k+1)*cols)).
  void all_gather(const std::byte* in, std::byte* out, std::size_t count, std::size_t cols, int dim,
                  DType dt);
  // `in` and `out` hold size() pieces of `piece` elements: out's piece k = member k's piece
  // rank().
  void all_to_all(const std::byte* in, std::byte* out, std::size_t piece, DType dt);
  // Every member's buf = root's.
  void broadcast(std::byte* buf, std::size_t count, DType dt, int root);
  void barrier();

 private:
  struct alignas(64) Control {
    std::atomic<std::uint64_t> arrived{0};
  };
  Control* control(int member) const;
  std::byte* slot(int member, int which, std::uint64_t round) const;  // which: 0 data, 1 result
  // Publishes this member's arrival at the next round and waits for every member's.
  void round(const char* what);
  std::uint64_t next_round() const { return round_ + 1; }
  // One chunk of an all-reduce (at most a slot): this member's `len` addends are at `own`,
  // either its own buffer (the sum replaces them there; `out` == own) or its data slot of the
  // next round, already written (own_in_slot; the sum goes to `out`).
  void all_reduce_chunk(const std::byte* own, bool own_in_slot, std::byte* out, std::size_t len,
                        DType dt, bool two_shot);
  // dst = sum over members of src[k], in member order, in dtype `dt`; also stored at dst2 when
  // it is not null.
  void reduce(const std::byte* const* src, DType dt, std::byte* dst, std::size_t count,
              std::byte* dst2 = nullptr) const;

  std::vector<std::byte*> bases_;
  int rank_ = 0, size_ = 1;
  ShmOptions options_;
  CpuIsa isa_ = CpuIsa::kSse41;
  std::string desc_;
  Timeout timeout_;
  std::uint64_t round_ = 0;
  mutable std::vector<float> wide_;  // 16-bit sums: the members' blocks widened to f32
};

}  // namespace tpl
