// The progress board: the side channel that lets a rank whose collective passed its deadline
// name the members that never joined it, which MPI cannot say (docs/errors.md, "Who never
// joined"). Each rank of a host publishes, per group, the highest collective number it joined
// and the highest it completed, and which collective it joined last; any rank of the host reads
// every row. It lives in one MPI-3 shared window per host (MpiSession allocates it once), so the
// reading needs nothing from the peer: a stopped rank's row still says how far it got.
//
// Each rank writes only its own row (under its watchdog's lock, so one writer per row); readers
// load with acquire what writers store with release. The last-joined record is several words,
// so it sits behind a sequence lock: odd while being written, readers retry until they see the
// same even count on both sides. A row holds kSlots groups; a group whose communicator is gone
// keeps its slot (and its last state, readable) until a new group needs one, the longest gone
// first. With kSlots live groups, a further one is not published and reads as "not known".
//
// The board also carries the dump request: a rank whose deadline expired bumps a counter; every
// rank's watchdog thread sees it within a tick, writes its flight recorder (TPL_DUMP_DIR) and
// acknowledges, so `tplinear analyze` gets every live rank's recorder, not only the reporter's.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tpl/watchdog.h"

namespace tpl {

class ShmProgressBoard final : public ProgressBoard {
 public:
  static constexpr int kSlots = 32;
  static constexpr int kMaxRows = 1024;
  static std::size_t bytes_for(int rows);
  // Lays the board out in `base` (bytes_for(rows) bytes, 64-byte aligned): done once, by one
  // process, before any board over it is used.
  static void init(void* base, int rows);

  // `base` as laid out by init(); row r belongs to world rank row_ranks[r]; this process writes
  // row `mine` only.
  ShmProgressBoard(void* base, std::vector<int> row_ranks, int mine);

  void joined(std::uint64_t key, std::uint64_t group_seq, const char* op) override;
  void completed(std::uint64_t key, std::uint64_t group_seq) override;
  void forget(std::uint64_t key) override;
  std::string report(std::uint64_t key, std::uint64_t group_seq,
                     const std::vector<int>& world_ranks) const override;
  std::uint64_t request_dumps() override;
  std::uint64_t pending_dump(std::uint64_t seen) const override;
  void dumped(std::uint64_t request) override;
  std::vector<int> await_dumps(std::uint64_t request, double seconds) override;

 private:
  struct Slot {
    std::atomic<std::uint64_t> key{0};  // 0: free
    std::atomic<std::uint64_t> joined{0};
    std::atomic<std::uint64_t> completed{0};
  };
  static constexpr int kOpWords = 3;  // 24 characters of the op's name
  struct alignas(64) Row {
    std::atomic<std::uint64_t> dump_ack{0};
    std::atomic<std::uint64_t> version{0};  // the sequence lock of the last-joined record
    std::atomic<std::uint64_t> last_key{0};
    std::atomic<std::uint64_t> last_seq{0};
    std::atomic<std::uint64_t> last_done{0};
    std::atomic<std::uint64_t> last_op[kOpWords]{};
    Slot slots[kSlots];
  };
  struct alignas(64) Header {
    std::atomic<std::uint64_t> dump_request{0};
  };
  struct Last {
    std::uint64_t key = 0, seq = 0;
    bool done = false;
    std::string op;
  };
  Row& row(int r) const;
  Last last_of(const Row& r) const;
  void write_last(std::uint64_t key, std::uint64_t seq, bool done, const char* op);
  int slot_of(std::uint64_t key);  // this rank's slot for `key`, claimed if new; -1: full

  Header* header_;
  std::vector<int> row_ranks_;
  int mine_;
  std::uint64_t my_keys_[kSlots] = {};     // this row's slot keys, kept locally (one writer)
  std::uint64_t retired_at_[kSlots] = {};  // when forgotten (a count), 0: in use or free
  std::uint64_t retirements_ = 0;
  std::uint64_t last_key_ = 0, last_seq_ = 0;
  std::uint64_t last_op_[kOpWords] = {};
};

}  // namespace tpl
