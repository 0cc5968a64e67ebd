#include "comm/shm_group.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <new>
#include <thread>
#include <utility>

#include "comm/shm_reduce.h"
#include "tpl/error.h"
#include "tpl/placement.h"

namespace tpl {

void ShmGroup::init_member(void* base) {
  new (base) Control();
}

ShmGroup::ShmGroup(std::vector<std::byte*> bases, int rank, const ShmOptions& options, CpuIsa isa,
                   std::string description, Timeout timeout)
    : bases_(std::move(bases)),
      rank_(rank),
      size_(static_cast<int>(bases_.size())),
      options_(options),
      isa_(isa),
      desc_(std::move(description)),
      timeout_(std::move(timeout)) {
  const Where where{"shm", rank_};
  TPL_CHECK(size_ >= 1 && size_ <= kMaxMembers, where, "a group of 1 to ", kMaxMembers,
            " members, not ", size_);
  TPL_CHECK(rank_ >= 0 && rank_ < size_, where, "rank ", rank_, " not in [0, ", size_, ")");
  TPL_CHECK(slot_bytes_ok(options_.slot_bytes), where, "slot_bytes must be a multiple of 64 of ",
            "at least ", kMinSlotBytes, ", not ", options_.slot_bytes);
  for (int k = 0; k < size_; ++k)
    TPL_CHECK(
        reinterpret_cast<std::uintptr_t>(bases_[static_cast<std::size_t>(k)]) % alignof(Control) ==
            0,
        where, "member ", k, "'s memory is not ", alignof(Control), "-byte aligned");
}

ShmGroup::Control* ShmGroup::control(int member) const {
  return std::launder(reinterpret_cast<Control*>(bases_[static_cast<std::size_t>(member)]));
}

std::byte* ShmGroup::slot(int member, int which, std::uint64_t round) const {
  const std::size_t index = static_cast<std::size_t>(2 * which) + (round % 2);
  return bases_[static_cast<std::size_t>(member)] + kControlBytes + index * options_.slot_bytes;
}

void ShmGroup::round(const char* what) {
  const std::uint64_t r = ++round_;
  control(rank_)->arrived.store(r, std::memory_order_release);
  const auto start = std::chrono::steady_clock::now();
  // ShmCommunicator's callback gives the earlier of ShmOptions::timeout_s and the watchdog's
  // deadline, so that SHM, which knows who is late, usually reports first.
  const double timeout = timeout_ ? timeout_() : options_.timeout_s;
  const auto deadline = start + std::chrono::duration<double>(timeout);
  for (int k = 0; k < size_; ++k) {
    std::uint64_t spins = 0;
    while (control(k)->arrived.load(std::memory_order_acquire) < r) {
      // Spin briefly (the peer is usually a few hundred ns behind), then give the core away:
      // members may outnumber cores.
      if (++spins < 256) {
        _mm_pause();
        continue;
      }
      std::this_thread::yield();
      if ((spins & 1023) == 0 && std::chrono::steady_clock::now() > deadline) {
        std::string late;
        for (int j = 0; j < size_; ++j)
          if (control(j)->arrived.load(std::memory_order_acquire) < r)
            late += (late.empty() ? "" : ", ") + std::to_string(j);
        TPL_THROW(CommError, (Where{"shm", rank_}), what, ": member(s) ", late,
                  " of the group did not arrive within ", timeout, " s (round ", r, "); ", desc_);
      }
    }
  }
}

void ShmGroup::reduce(const std::byte* const* src, DType dt, std::byte* dst, std::size_t count,
                      std::byte* dst2) const {
  const int n = size_;
  if (dt == DType::kF32) {
    const float* s[kMaxMembers];
    for (int k = 0; k < n; ++k) s[k] = reinterpret_cast<const float*>(src[k]);
    shm::sum_f32(s, n, reinterpret_cast<float*>(dst), count, isa_, reinterpret_cast<float*>(dst2));
    return;
  }
  if (dt == DType::kI32) {
    const std::int32_t* s[kMaxMembers];
    for (int k = 0; k < n; ++k) s[k] = reinterpret_cast<const std::int32_t*>(src[k]);
    shm::sum_i32(s, n, reinterpret_cast<std::int32_t*>(dst), count);
    if (dst2 && count > 0) std::memcpy(dst2, dst, count * sizeof(std::int32_t));
    return;
  }
  // 16-bit floats: widen each member's block to f32, sum in order, round once.
  constexpr std::size_t kBlock = 2048;
  std::vector<float>& wide = wide_;
  wide.resize(static_cast<std::size_t>(n + 1) * kBlock);
  const std::size_t es = dtype_size(dt);
  for (std::size_t at = 0; at < count; at += kBlock) {
    const std::size_t len = std::min(kBlock, count - at);
    const float* s[kMaxMembers];
    for (int k = 0; k < n; ++k) {
      float* w = wide.data() + static_cast<std::size_t>(k) * kBlock;
      convert_to_f32(src[k] + at * es, dt, w, len);
      s[k] = w;
    }
    float* acc = wide.data() + static_cast<std::size_t>(n) * kBlock;
    shm::sum_f32(s, n, acc, len, isa_);
    convert_from_f32(acc, dst + at * es, dt, len);
    if (dst2) std::memcpy(dst2 + at * es, dst + at * es, len * es);
  }
}

void ShmGroup::all_reduce(std::byte* data, std::size_t total, DType dt) {
  if (size_ == 1 || total == 0) return;
  const std::size_t es = dtype_size(dt);
  const bool two_shot = total * es >= options_.two_shot_bytes;
  const std::size_t chunk = options_.slot_bytes / es;
  for (std::size_t o = 0; o < total; o += chunk)
    all_reduce_chunk(data + o * es, false, data + o * es, std::min(chunk, total - o), dt, two_shot);
}

void ShmGroup::all_reduce_addend(std::byte* out, std::size_t count, DType dt) {
  const std::size_t es = dtype_size(dt);
  TPL_CHECK(count * es <= options_.slot_bytes, (Where{"shm all_reduce", rank_}), "an addend of ",
            count * es, " bytes does not fit the ", options_.slot_bytes, "-byte slot");
  if (count == 0) return;
  if (size_ == 1) {
    std::memcpy(out, addend_slot(), count * es);
    return;
  }
  // The same algorithm as all_reduce on the whole message (one chunk), hence the same sums.
  all_reduce_chunk(addend_slot(), true, out, count, dt, count * es >= options_.two_shot_bytes);
}

void ShmGroup::all_reduce_chunk(const std::byte* own, bool own_in_slot, std::byte* out,
                                std::size_t len, DType dt, bool two_shot) {
  const std::size_t es = dtype_size(dt);
  const std::uint64_t r = next_round();
  const std::byte* src[kMaxMembers];
  if (!two_shot) {  // one-shot: every member sums the whole chunk itself
    if (!own_in_slot) std::memcpy(slot(rank_, 0, r), own, len * es);
    round("all_reduce");
    for (int k = 0; k < size_; ++k) src[k] = k == rank_ ? own : slot(k, 0, r);
    reduce(src, dt, out, len);
    return;
  }
  // Two-shot: member k sums segment k, then every member gathers every segment. This member's
  // own segment never goes through its slots: it publishes only the segments the others sum,
  // sums its own from `own` straight into `out` and its result slot, and copies in only the
  // others' results. For 2 members that moves 4 bytes per byte of the chunk, not 5.5 (3 when
  // the addend was produced in the slot).
  const auto seg = [&](int k) {
    const ShardRange s = shard_range(static_cast<std::int64_t>(len), size_, k);
    return std::pair{static_cast<std::size_t>(s.offset) * es,
                     static_cast<std::size_t>(s.size) * es};
  };
  if (!own_in_slot)
    for (int k = 0; k < size_; ++k)
      if (k != rank_)
        std::memcpy(slot(rank_, 0, r) + seg(k).first, own + seg(k).first, seg(k).second);
  round("all_reduce");
  const auto [mine, mine_bytes] = seg(rank_);
  for (int k = 0; k < size_; ++k) src[k] = (k == rank_ ? own : slot(k, 0, r)) + mine;
  reduce(src, dt, out + mine, mine_bytes / es, slot(rank_, 1, r) + mine);
  round("all_reduce");
  for (int k = 0; k < size_; ++k)
    if (k != rank_) std::memcpy(out + seg(k).first, slot(k, 1, r) + seg(k).first, seg(k).second);
}

void ShmGroup::reduce_scatter(const std::byte* in, std::byte* out, std::size_t block, DType dt) {
  const std::size_t es = dtype_size(dt);
  if (size_ == 1) {
    if (block > 0) std::memcpy(out, in, block * es);
    return;
  }
  const std::size_t chunk = options_.slot_bytes / (es * static_cast<std::size_t>(size_));
  const std::byte* src[kMaxMembers];
  for (std::size_t o = 0; o < block; o += chunk) {
    const std::size_t len = std::min(chunk, block - o);
    const std::uint64_t r = next_round();
    for (int k = 0; k < size_; ++k)
      std::memcpy(slot(rank_, 0, r) + static_cast<std::size_t>(k) * len * es,
                  in + (static_cast<std::size_t>(k) * block + o) * es, len * es);
    round("reduce_scatter");
    for (int k = 0; k < size_; ++k)
      src[k] = slot(k, 0, r) + static_cast<std::size_t>(rank_) * len * es;
    reduce(src, dt, out + o * es, len);
  }
}

void ShmGroup::all_gather(const std::byte* in, std::byte* out, std::size_t total, std::size_t cols,
                          int dim, DType dt) {
  const std::size_t es = dtype_size(dt);
  if (size_ == 1) {
    if (total > 0) std::memcpy(out, in, total * es);
    return;
  }
  const std::size_t chunk = options_.slot_bytes / es;
  for (std::size_t o = 0; o < total; o += chunk) {
    const std::size_t len = std::min(chunk, total - o);
    const std::uint64_t r = next_round();
    std::memcpy(slot(rank_, 0, r), in + o * es, len * es);
    round("all_gather");
    for (int k = 0; k < size_; ++k) {
      const std::byte* from = slot(k, 0, r);
      if (dim == 0) {
        std::memcpy(out + (static_cast<std::size_t>(k) * total + o) * es, from, len * es);
        continue;
      }
      // dim 1: member k's element e goes to row e / cols, column k * cols + e % cols.
      for (std::size_t e = o; e < o + len;) {
        const std::size_t row = e / cols, col = e % cols, run = std::min(cols - col, o + len - e);
        std::memcpy(out + (row * cols * static_cast<std::size_t>(size_) +
                           static_cast<std::size_t>(k) * cols + col) *
                              es,
                    from + (e - o) * es, run * es);
        e += run;
      }
    }
  }
}

void ShmGroup::all_to_all(const std::byte* in, std::byte* out, std::size_t piece, DType dt) {
  const std::size_t es = dtype_size(dt);
  if (size_ == 1) {  // same element count, maybe another shape
    if (piece > 0) std::memcpy(out, in, piece * es);
    return;
  }
  const std::size_t chunk = options_.slot_bytes / (es * static_cast<std::size_t>(size_));
  for (std::size_t o = 0; o < piece; o += chunk) {
    const std::size_t len = std::min(chunk, piece - o);
    const std::uint64_t r = next_round();
    for (int k = 0; k < size_; ++k)
      std::memcpy(slot(rank_, 0, r) + static_cast<std::size_t>(k) * len * es,
                  in + (static_cast<std::size_t>(k) * piece + o) * es, len * es);
    round("all_to_all");
    for (int k = 0; k < size_; ++k)
      std::memcpy(out + (static_cast<std::size_t>(k) * piece + o) * es,
                  slot(k, 0, r) + static_cast<std::size_t>(rank_) * len * es, len * es);
  }
}

void ShmGroup::broadcast(std::byte* buf, std::size_t total, DType dt, int root) {
  if (size_ == 1) return;
  const std::size_t es = dtype_size(dt);
  const std::size_t chunk = options_.slot_bytes / es;
  for (std::size_t o = 0; o < total; o += chunk) {
    const std::size_t len = std::min(chunk, total - o);
    const std::uint64_t r = next_round();
    if (rank_ == root) std::memcpy(slot(root, 0, r), buf + o * es, len * es);
    round("broadcast");
    if (rank_ != root) std::memcpy(buf + o * es, slot(root, 0, r), len * es);
  }
}

void ShmGroup::barrier() {
  if (size_ == 1) return;
  round("barrier");
}

}  // namespace tpl
