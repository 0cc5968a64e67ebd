#include "comm/progress_board.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <thread>

#include "tpl/error.h"

namespace tpl {
namespace {

constexpr auto acq = std::memory_order_acquire;
constexpr auto rel = std::memory_order_release;
constexpr auto rlx = std::memory_order_relaxed;

std::string rank_list(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (std::size_t i = 0; i < ranks.size(); ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return s;
}

}  // namespace

std::size_t ShmProgressBoard::bytes_for(int rows) {
  return sizeof(Header) + static_cast<std::size_t>(rows) * sizeof(Row);
}

void ShmProgressBoard::init(void* base, int rows) {
  auto* b = static_cast<std::byte*>(base);
  new (b) Header();
  for (int r = 0; r < rows; ++r) new (b + sizeof(Header) + r * sizeof(Row)) Row();
}

ShmProgressBoard::ShmProgressBoard(void* base, std::vector<int> row_ranks, int mine)
    : header_(std::launder(static_cast<Header*>(base))),
      row_ranks_(std::move(row_ranks)),
      mine_(mine) {
  const Where where{"progress board", mine};
  TPL_CHECK(!row_ranks_.empty() && static_cast<int>(row_ranks_.size()) <= kMaxRows, where, "1 to ",
            kMaxRows, " rows, not ", row_ranks_.size());
  TPL_CHECK(mine_ >= 0 && mine_ < static_cast<int>(row_ranks_.size()), where, "row ", mine_,
            " not in [0, ", row_ranks_.size(), ")");
  TPL_CHECK(reinterpret_cast<std::uintptr_t>(base) % alignof(Row) == 0, where, "the board at ",
            base, " is not ", alignof(Row), "-byte aligned");
  // A rank that joins late (a new session over the same window) picks up its own slots.
  const Row& me = row(mine_);
  for (int i = 0; i < kSlots; ++i) my_keys_[i] = me.slots[i].key.load(acq);
}

ShmProgressBoard::Row& ShmProgressBoard::row(int r) const {
  auto* b = reinterpret_cast<std::byte*>(header_) + sizeof(Header) + r * sizeof(Row);
  return *std::launder(reinterpret_cast<Row*>(b));
}

int ShmProgressBoard::slot_of(std::uint64_t key) {
  for (int i = 0; i < kSlots; ++i)
    if (my_keys_[i] == key) return i;
  int pick = -1;
  for (int i = 0; i < kSlots && pick < 0; ++i)
    if (my_keys_[i] == 0) pick = i;
  if (pick < 0) {
    for (int i = 0; i < kSlots; ++i)
      if (retired_at_[i] != 0 && (pick < 0 || retired_at_[i] < retired_at_[pick])) pick = i;
  }
  if (pick < 0) return -1;
  Slot& s = row(mine_).slots[pick];
  s.key.store(0, rel);  // readers stop matching the old group before its counts are reset
  s.joined.store(0, rlx);
  s.completed.store(0, rlx);
  s.key.store(key, rel);  // a reader that sees the key sees the zeroed counts
  my_keys_[pick] = key;
  retired_at_[pick] = 0;
  return pick;
}

void ShmProgressBoard::forget(std::uint64_t key) {
  for (int i = 0; i < kSlots; ++i)
    if (my_keys_[i] == key && retired_at_[i] == 0) retired_at_[i] = ++retirements_;
}

void ShmProgressBoard::write_last(std::uint64_t key, std::uint64_t seq, bool done, const char* op) {
  Row& r = row(mine_);
  if (op) {
    char name[kOpWords * 8] = {};
    std::strncpy(name, op, sizeof name - 1);
    std::memcpy(last_op_, name, sizeof name);
  }
  const std::uint64_t v = r.version.load(rlx);
  r.version.store(v + 1, rlx);    // odd: being written
  std::atomic_thread_fence(rel);  // the odd count is visible before any field changes
  r.last_key.store(key, rlx);
  r.last_seq.store(seq, rlx);
  r.last_done.store(done ? 1 : 0, rlx);
  for (int i = 0; i < kOpWords; ++i) r.last_op[i].store(last_op_[i], rlx);
  r.version.store(v + 2, rel);  // even again: the fields above are published
  last_key_ = key;
  last_seq_ = seq;
}

ShmProgressBoard::Last ShmProgressBoard::last_of(const Row& r) const {
  Last l;
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::uint64_t v1 = r.version.load(acq);
    std::uint64_t op[kOpWords];
    l.key = r.last_key.load(rlx);
    l.seq = r.last_seq.load(rlx);
    l.done = r.last_done.load(rlx) != 0;
    for (int i = 0; i < kOpWords; ++i) op[i] = r.last_op[i].load(rlx);
    std::atomic_thread_fence(acq);  // the loads above happen before the second count's
    if (v1 % 2 == 0 && r.version.load(rlx) == v1) {
      char name[kOpWords * 8 + 1] = {};
      std::memcpy(name, op, kOpWords * 8);
      l.op = name;
      return l;
    }
  }
  return Last{};  // a writer kept it busy; say nothing rather than something torn
}

void ShmProgressBoard::joined(std::uint64_t key, std::uint64_t group_seq, const char* op) {
  const int i = slot_of(key);
  if (i >= 0) {
    Slot& s = row(mine_).slots[i];
    if (group_seq > s.joined.load(rlx)) s.joined.store(group_seq, rel);
  }
  write_last(key, group_seq, false, op);
}

void ShmProgressBoard::completed(std::uint64_t key, std::uint64_t group_seq) {
  const int i = slot_of(key);
  if (i >= 0) {
    Slot& s = row(mine_).slots[i];
    if (group_seq > s.completed.load(rlx)) s.completed.store(group_seq, rel);
  }
  if (key == last_key_ && group_seq == last_seq_) write_last(key, group_seq, true, nullptr);
}

std::string ShmProgressBoard::report(std::uint64_t key, std::uint64_t group_seq,
                                     const std::vector<int>& world_ranks) const {
  std::vector<int> finished, waiting, elsewhere, unknown;
  std::vector<std::string> never;  // "1 (at #6 of this group; last: ...)"
  std::vector<int> never_ranks;
  for (const int w : world_ranks) {
    const auto it = std::find(row_ranks_.begin(), row_ranks_.end(), w);
    if (it == row_ranks_.end()) {
      elsewhere.push_back(w);
      continue;
    }
    const Row& r = row(static_cast<int>(it - row_ranks_.begin()));
    int slot = -1;
    for (int i = 0; i < kSlots && slot < 0; ++i)
      if (r.slots[i].key.load(acq) == key) slot = i;
    std::uint64_t joined = 0, completed = 0;
    if (slot >= 0) {
      joined = r.slots[slot].joined.load(acq);
      completed = r.slots[slot].completed.load(acq);
    } else if (r.slots[kSlots - 1].key.load(acq) != 0) {
      unknown.push_back(w);  // its slots are full: this group may be one it could not publish
      continue;
    }
    if (joined >= group_seq && completed >= group_seq) {
      finished.push_back(w);
    } else if (joined >= group_seq) {
      waiting.push_back(w);
    } else {
      const Last l = last_of(r);
      std::string s = std::to_string(w) + " (at #" + std::to_string(joined) + " of this group";
      if (!l.op.empty())
        s += "; last: " + l.op + " #" + std::to_string(l.seq) + " of " +
             (l.key == key ? "this group" : "another group") +
             (l.done ? ", completed" : ", in flight");
      never.push_back(s + ")");
      never_ranks.push_back(w);
    }
  }
  std::string out;
  auto add = [&](const std::string& what, const std::string& s) {
    if (!out.empty()) out += "; ";
    out += what + ": " + s;
  };
  if (!never.empty()) {
    std::string s = never_ranks.size() == 1 ? "rank " : "ranks ";
    for (std::size_t i = 0; i < never.size(); ++i) s += (i ? ", " : "") + never[i];
    add("never joined", s);
  }
  if (!waiting.empty()) add("joined, not finished", rank_list(waiting));
  if (!finished.empty()) add("finished", rank_list(finished));
  if (!unknown.empty()) add("not known (progress board full)", rank_list(unknown));
  if (!elsewhere.empty()) add("on another host, not known", rank_list(elsewhere));
  return out;
}

std::uint64_t ShmProgressBoard::request_dumps() {
  return header_->dump_request.fetch_add(1, std::memory_order_acq_rel) + 1;
}

std::uint64_t ShmProgressBoard::pending_dump(std::uint64_t seen) const {
  const std::uint64_t v = header_->dump_request.load(acq);
  return v > seen ? v : 0;
}

void ShmProgressBoard::dumped(std::uint64_t request) {
  Row& r = row(mine_);
  if (request > r.dump_ack.load(rlx)) r.dump_ack.store(request, rel);
}

std::vector<int> ShmProgressBoard::await_dumps(std::uint64_t request, double seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::vector<int> missing;
  for (;;) {
    // This rank's recorder is written, and its watchdog thread is the one waiting here: answer
    // any peer that asked meanwhile, or two ranks whose deadlines expired together would each
    // wait for the other.
    dumped(header_->dump_request.load(acq));
    missing.clear();
    for (int r = 0; r < static_cast<int>(row_ranks_.size()); ++r)
      if (r != mine_ && row(r).dump_ack.load(acq) < request)
        missing.push_back(row_ranks_[static_cast<std::size_t>(r)]);
    if (missing.empty() || std::chrono::steady_clock::now() >= until) return missing;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace tpl
