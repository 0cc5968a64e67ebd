// The SHM communicator's core (src/comm/shm_group.h) with threads for members: one std::thread
// per member over one shared heap buffer, each with its own ShmGroup, exactly as ranks share the
// MPI window. Built twice (tests/comm/CMakeLists.txt): as a unit test, and with
// -fsanitize=thread (the tsan label), where ThreadSanitizer checks the rounds' release/acquire
// argument, which it cannot across processes: a slot read that the arrival flags do not order
// after its write is a reported race, and the test fails (TSAN_OPTIONS=halt_on_error=1). The
// overlap worker (tpl/comm_worker.h) runs here too, as the fused paths use it.
//
// Every collective runs, in a shuffled sequence so that each follows every other (slot reuse
// across collectives), with random data, sizes from 1 element to a few slots (chunking; both
// all-reduce algorithms with 4 KiB slots and a 1 KiB two-shot threshold, and one-shot only),
// members on different sum kernels (avx512, avx2, scalar, as the CPU allows). Each result is
// checked against a fold computed here in member order 0..n-1: bit-exact for f32 and int32, and
// for bf16 the sum widened to f32 in that order and rounded once.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/shm_group.h"
#include "tpl/comm_worker.h"
#include "tpl/error.h"

namespace tpl {
namespace {

// Every member's memory (control page and slots) in one page-aligned heap buffer.
class SharedMemory {
 public:
  SharedMemory(int members, std::size_t slot_bytes)
      : bytes_(static_cast<std::size_t>(members) * ShmGroup::member_bytes(slot_bytes)),
        mem_(static_cast<std::byte*>(::operator new (bytes_, std::align_val_t{4096}))) {
    for (int k = 0; k < members; ++k) {
      bases_.push_back(mem_ + static_cast<std::size_t>(k) * ShmGroup::member_bytes(slot_bytes));
      ShmGroup::init_member(bases_.back());  // before the threads start: ordered by their start
    }
  }
  ~SharedMemory() { ::operator delete (mem_, std::align_val_t{4096}); }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  const std::vector<std::byte*>& bases() const { return bases_; }

 private:
  std::size_t bytes_;
  std::byte* mem_;
  std::vector<std::byte*> bases_;
};

// The sum kernels this CPU (and TPL_CPU_ISA) allows, widest first; member k uses the
// (k % size)-th, so members on different kernels must still agree bit for bit.
std::vector<CpuIsa> kernels() {
  const CpuIsa top = detect_cpu().effective();
  std::vector<CpuIsa> v;
  for (CpuIsa isa : {CpuIsa::kAvx512Core, CpuIsa::kAvx2, CpuIsa::kSse41})
    if (isa <= top) v.push_back(isa);
  return v;
}

// Runs body(rank) on one thread per member; returns each member's error message ("" if none).
template <typename Body>
std::vector<std::string> run_members(int n, Body body) {
  std::vector<std::string> errors(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        body(r);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  return errors;
}

enum class Kind {
  kAllReduce,
  kAllReduceAddend,  // the addend written into the slot first (all_reduce_addend)
  kReduceScatter,
  kAllGather0,
  kAllGather1,
  kAllToAll,
  kBroadcast,
  kBarrier
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kAllReduce:
      return "all_reduce";
    case Kind::kAllReduceAddend:
      return "all_reduce_addend";
    case Kind::kReduceScatter:
      return "reduce_scatter";
    case Kind::kAllGather0:
      return "all_gather(dim 0)";
    case Kind::kAllGather1:
      return "all_gather(dim 1)";
    case Kind::kAllToAll:
      return "all_to_all";
    case Kind::kBroadcast:
      return "broadcast";
    case Kind::kBarrier:
      return "barrier";
  }
  return "?";
}

using Bytes = std::vector<std::byte>;

// One collective of the sequence: its inputs and outputs per member (all made before the
// threads start, read after they end) and what each member's output must be.
struct Op {
  Kind kind = Kind::kBarrier;
  std::size_t count = 0;  // per the ShmGroup call: elements, block, piece
  std::size_t cols = 1;   // all_gather(dim 1)
  int root = 0;           // broadcast
  std::vector<Bytes> in, out, expected;
};

// Random values whose sums depend on the order: magnitudes 2^-12 .. 2^12, both signs.
void fill(Bytes& b, DType dt, std::mt19937& rng) {
  const std::size_t es = dtype_size(dt), n = b.size() / es;
  std::uniform_int_distribution<int> expo(-12, 12);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (std::size_t i = 0; i < n; ++i) {
    if (dt == DType::kI32) {
      const std::uint32_t v = bits(rng);
      std::memcpy(b.data() + i * es, &v, es);
      continue;
    }
    float f = std::ldexp(mant(rng), expo(rng)) * ((bits(rng) & 1) ? -1.0f : 1.0f);
    if (dt == DType::kF32) {
      std::memcpy(b.data() + i * es, &f, es);
    } else {
      const std::uint16_t h = f32_to_bf16_bits(f);
      std::memcpy(b.data() + i * es, &h, es);
    }
  }
}

// The reference: src[0] + src[1] + ... + src[n-1], left to right, one element each.
void fold(const std::vector<const std::byte*>& src, DType dt, std::byte* dst) {
  if (dt == DType::kI32) {
    std::uint32_t acc = 0;
    for (const std::byte* p : src) {
      std::uint32_t v;
      std::memcpy(&v, p, 4);
      acc += v;
    }
    std::memcpy(dst, &acc, 4);
    return;
  }
  float acc = 0;
  for (std::size_t k = 0; k < src.size(); ++k) {
    float v;
    if (dt == DType::kF32) {
      std::memcpy(&v, src[k], 4);
    } else {
      std::uint16_t h;
      std::memcpy(&h, src[k], 2);
      v = bf16_bits_to_f32(h);
    }
    acc = k == 0 ? v : acc + v;
  }
  if (dt == DType::kF32) {
    std::memcpy(dst, &acc, 4);
  } else {
    const std::uint16_t h = f32_to_bf16_bits(acc);
    std::memcpy(dst, &h, 2);
  }
}

std::string show(const std::byte* p, DType dt) {
  char buf[64];
  if (dt == DType::kI32) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    std::snprintf(buf, sizeof buf, "%d", v);
  } else if (dt == DType::kF32) {
    float f;
    std::uint32_t u;
    std::memcpy(&f, p, 4);
    std::memcpy(&u, p, 4);
    std::snprintf(buf, sizeof buf, "%.9g (0x%08x)", static_cast<double>(f), u);
  } else {
    std::uint16_t h;
    std::memcpy(&h, p, 2);
    std::snprintf(buf, sizeof buf, "%.4g (0x%04x)", static_cast<double>(bf16_bits_to_f32(h)),
                  static_cast<unsigned>(h));
  }
  return buf;
}

// Builds op's inputs, outputs and expected results for n members.
void prepare(Op& op, int n, DType dt, std::mt19937& rng) {
  const std::size_t es = dtype_size(dt), c = op.count, un = static_cast<std::size_t>(n);
  std::size_t in_elems = 0, out_elems = 0;
  switch (op.kind) {
    case Kind::kAllReduce:
    case Kind::kAllReduceAddend:
    case Kind::kBroadcast:
      in_elems = out_elems = c;
      break;
    case Kind::kReduceScatter:
      in_elems = un * c, out_elems = c;
      break;
    case Kind::kAllGather0:
    case Kind::kAllGather1:
      in_elems = c, out_elems = un * c;
      break;
    case Kind::kAllToAll:
      in_elems = out_elems = un * c;
      break;
    case Kind::kBarrier:
      break;
  }
  op.in.assign(un, Bytes(in_elems * es));
  op.out.assign(un, Bytes(out_elems * es));
  op.expected.assign(un, Bytes(out_elems * es));
  for (int k = 0; k < n; ++k) {
    fill(op.in[k], dt, rng);
    fill(op.out[k], dt, rng);  // garbage that must be overwritten
  }
  auto at = [&](auto& b, std::size_t i) { return b.data() + i * es; };
  std::vector<const std::byte*> src(un);
  for (int r = 0; r < n; ++r) {
    Bytes& e = op.expected[r];
    switch (op.kind) {
      case Kind::kAllReduce:
      case Kind::kAllReduceAddend:
        if (op.kind == Kind::kAllReduce) op.out[r] = op.in[r];  // in place
        for (std::size_t i = 0; i < c; ++i) {
          for (int k = 0; k < n; ++k) src[k] = at(op.in[k], i);
          fold(src, dt, at(e, i));
        }
        break;
      case Kind::kReduceScatter:
        for (std::size_t i = 0; i < c; ++i) {
          for (int k = 0; k < n; ++k) src[k] = at(op.in[k], static_cast<std::size_t>(r) * c + i);
          fold(src, dt, at(e, i));
        }
        break;
      case Kind::kAllGather0:
        for (int k = 0; k < n; ++k) std::memcpy(at(e, k * c), op.in[k].data(), c * es);
        break;
      case Kind::kAllGather1:
        for (int k = 0; k < n; ++k)
          for (std::size_t row = 0; row < c / op.cols; ++row)
            std::memcpy(at(e, row * op.cols * un + k * op.cols), at(op.in[k], row * op.cols),
                        op.cols * es);
        break;
      case Kind::kAllToAll:
        for (int k = 0; k < n; ++k)
          std::memcpy(at(e, k * c), at(op.in[k], static_cast<std::size_t>(r) * c), c * es);
        break;
      case Kind::kBroadcast:
        if (r == op.root) op.out[r] = op.in[r];
        e = op.in[op.root];
        break;
      case Kind::kBarrier:
        break;
    }
  }
}

void run_op(ShmGroup& g, Op& op, DType dt) {
  const int r = g.rank();
  std::byte* out = op.out[r].data();
  const std::byte* in = op.in[r].data();
  switch (op.kind) {
    case Kind::kAllReduce:
      return g.all_reduce(out, op.count, dt);
    case Kind::kAllReduceAddend:
      if (op.count > 0) std::memcpy(g.addend_slot(), in, op.count * dtype_size(dt));
      return g.all_reduce_addend(out, op.count, dt);
    case Kind::kReduceScatter:
      return g.reduce_scatter(in, out, op.count, dt);
    case Kind::kAllGather0:
      return g.all_gather(in, out, op.count, op.cols, 0, dt);
    case Kind::kAllGather1:
      return g.all_gather(in, out, op.count, op.cols, 1, dt);
    case Kind::kAllToAll:
      return g.all_to_all(in, out, op.count, dt);
    case Kind::kBroadcast:
      return g.broadcast(out, op.count, dt, op.root);
    case Kind::kBarrier:
      return g.barrier();
  }
}

struct Config {
  int members;
  DType dtype;
  bool two_shot;  // two_shot_bytes 1 KiB (both algorithms by size), else one-shot only
};

std::string config_name(const testing::TestParamInfo<Config>& info) {
  return "n" + std::to_string(info.param.members) + "_" + dtype_name(info.param.dtype) +
         (info.param.two_shot ? "_two_shot" : "_one_shot");
}

class ShmGroupThreads : public testing::TestWithParam<Config> {};

TEST_P(ShmGroupThreads, EveryCollectiveMatchesTheMemberOrderFold) {
  const Config cfg = GetParam();
  const int n = cfg.members;
  const DType dt = cfg.dtype;
  ShmOptions options;
  options.slot_bytes = 4096;  // f32: 1024 elements a round, fewer for the n-block collectives
  options.two_shot_bytes = cfg.two_shot ? 1024 : (std::size_t{1} << 40);
  options.timeout_s = 60;  // a hang fails here rather than at CTest's timeout
  std::mt19937 rng(1234u + static_cast<unsigned>(n) * 17u + static_cast<unsigned>(dt) * 5u +
                   (cfg.two_shot ? 1u : 0u));

  // Sizes from 1 element to a few slots, around the chunk and two-shot boundaries.
  std::vector<Op> ops;
  auto add = [&](Kind kind, std::size_t count, std::size_t cols = 1) {
    Op op;
    op.kind = kind, op.count = count, op.cols = cols;
    op.root = static_cast<int>(ops.size()) % n;
    ops.push_back(std::move(op));
  };
  for (std::size_t c : {1, 7, 255, 256, 1000, 1024, 1025, 2048, 2049, 5000})
    add(Kind::kAllReduce, c);
  for (std::size_t c : {1, 7, 255, 256, 1000, 1024}) add(Kind::kAllReduceAddend, c);  // <= a slot
  for (std::size_t c : {1, 5, 340, 341, 342, 1000, 2100}) add(Kind::kReduceScatter, c);
  for (std::size_t c : {1, 9, 1024, 1025, 3001}) add(Kind::kAllGather0, c);
  for (auto [rows, cols] :
       std::initializer_list<std::pair<int, int>>{{1, 1}, {3, 5}, {7, 150}, {40, 77}, {2, 1500}})
    add(Kind::kAllGather1, static_cast<std::size_t>(rows * cols), static_cast<std::size_t>(cols));
  for (std::size_t c : {1, 9, 341, 700, 1500}) add(Kind::kAllToAll, c);
  for (std::size_t c : {1, 100, 1024, 1025, 3000}) add(Kind::kBroadcast, c);
  for (int i = 0; i < 3; ++i) add(Kind::kBarrier, 0);
  std::shuffle(ops.begin(), ops.end(), rng);
  for (Op& op : ops) prepare(op, n, dt, rng);

  SharedMemory shared(n, options.slot_bytes);
  const std::vector<CpuIsa> isas = kernels();
  const std::vector<std::string> errors = run_members(n, [&](int r) {
    ShmGroup group(shared.bases(), r, options, isas[static_cast<std::size_t>(r) % isas.size()],
                   "thread group of " + std::to_string(n));
    for (Op& op : ops) run_op(group, op, dt);
  });
  for (int r = 0; r < n; ++r) ASSERT_EQ(errors[r], "") << "member " << r;

  const std::size_t es = dtype_size(dt);
  int reported = 0;
  for (std::size_t j = 0; j < ops.size(); ++j) {
    const Op& op = ops[j];
    for (int r = 0; r < n; ++r) {
      const std::size_t elems = op.expected[r].size() / es;
      for (std::size_t i = 0; i < elems; ++i) {
        const std::byte* want = op.expected[r].data() + i * es;
        const std::byte* got = op.out[r].data() + i * es;
        if (std::memcmp(want, got, es) == 0) continue;
        if (++reported <= 10)
          ADD_FAILURE() << "member " << r << ", " << kind_name(op.kind) << " of " << op.count
                        << (op.kind == Kind::kAllGather1 ? " (cols " + std::to_string(op.cols) + ")"
                                                         : std::string())
                        << " (collective " << j << " of the sequence), index " << i << ": expected "
                        << show(want, dt) << ", got " << show(got, dt);
      }
    }
  }
  EXPECT_EQ(reported, 0) << "mismatching elements in all";
}

std::vector<Config> configs() {
  std::vector<Config> v;
  for (int n : {1, 2, 3, 4})
    for (DType dt : {DType::kF32, DType::kBF16, DType::kI32})
      for (bool two_shot : {true, false})
        if (n > 1 || two_shot) v.push_back({n, dt, two_shot});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Members, ShmGroupThreads, testing::ValuesIn(configs()), config_name);

// The fused paths' threading (src/ops/gemm_collectives.cc): each member computes chunk k+1 of
// its partial result while its CommWorker all-reduces chunk k through the SHM core, then reads
// every chunk after waiting for its ticket. ThreadSanitizer checks that submit() orders the
// chunk's writes before the worker's reads, and wait()/finished() the worker's result before the
// member's; the sums (small integers, exact in f32) check the data.
TEST(CommWorkerThreads, FusedChunksAllReduceOnEachMembersWorker) {
  for (int n : {1, 2, 3, 4}) {
    ShmOptions options;
    options.slot_bytes = 4096;
    options.two_shot_bytes = 1024;
    options.timeout_s = 60;
    SharedMemory shared(n, options.slot_bytes);
    const std::size_t rows = 37, cols = 53, chunks = 5;  // uneven chunks of rows
    std::vector<std::vector<float>> out(static_cast<std::size_t>(n));
    const std::vector<std::string> errors = run_members(n, [&](int r) {
      ShmGroup group(shared.bases(), r, options, CpuIsa::kSse41, "worker group");
      std::vector<float>& y = out[static_cast<std::size_t>(r)];
      y.assign(rows * cols, 0.0f);
      CommWorker worker;  // destroyed (drained) before the group
      std::vector<std::uint64_t> tickets;
      for (std::size_t c = 0; c < chunks; ++c) {
        const std::size_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
        for (std::size_t i = r0 * cols; i < r1 * cols; ++i)  // the "GEMM" of chunk c
          y[i] = static_cast<float>((static_cast<std::size_t>(r) + 1) * (i % 97));
        float* p = y.data() + r0 * cols;
        const std::size_t count = (r1 - r0) * cols;
        tickets.push_back(worker.submit([&group, p, count] {
          group.all_reduce(reinterpret_cast<std::byte*>(p), count, DType::kF32);
        }));
      }
      while (!worker.finished(tickets.front())) std::this_thread::yield();
      worker.wait(tickets.back());
    });
    const float members = static_cast<float>(n * (n + 1) / 2);  // sum of (r + 1)
    for (int r = 0; r < n; ++r) {
      ASSERT_EQ(errors[r], "") << "members " << n << ", member " << r;
      const std::vector<float>& y = out[static_cast<std::size_t>(r)];
      for (std::size_t i = 0; i < y.size(); ++i)
        ASSERT_EQ(y[i], members * static_cast<float>(i % 97))
            << "members " << n << ", member " << r << ", index " << i;
    }
  }
}

// A task's exception reaches the waiter once no task is left running on its buffers, and the
// worker keeps serving; the destructor runs what is still queued.
TEST(CommWorkerThreads, AnErrorReachesTheWaiterAndTheWorkerGoesOn) {
  std::vector<int> done(3, 0);
  {
    CommWorker worker;
    worker.submit([] { throw std::runtime_error("task 0 failed"); });
    const std::uint64_t t1 = worker.submit([&] { done[1] = 1; });
    try {
      worker.wait(t1);
      ADD_FAILURE() << "wait() did not rethrow task 0's exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "task 0 failed");
    }
    EXPECT_EQ(done[1], 1) << "wait() returned while task 1 could still run";
    worker.wait(worker.submit([&] { done[0] = 1; }));  // the error was taken: no rethrow
    EXPECT_EQ(done[0], 1);
    worker.submit([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      done[2] = 1;
    });
  }
  EXPECT_EQ(done[2], 1) << "the destructor dropped a queued task";
}

// Members `late` never enter the collective (their threads skip it); every other member gets a
// CommError naming exactly them, within the short deadline.
void expect_named(int n, const std::vector<int>& late, bool barrier, ShmGroup::Timeout timeout,
                  double options_timeout_s, const std::string& within) {
  ShmOptions options;
  options.slot_bytes = 4096;
  options.two_shot_bytes = 1024;
  options.timeout_s = options_timeout_s;
  SharedMemory shared(n, options.slot_bytes);
  std::string names;
  for (int k : late) names += (names.empty() ? "" : ", ") + std::to_string(k);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> kinds(static_cast<std::size_t>(n));
  const std::vector<std::string> errors = run_members(n, [&](int r) {
    ShmGroup group(shared.bases(), r, options, CpuIsa::kSse41, "thread group", timeout);
    std::vector<float> data(3000, 1.0f);  // three chunks: the wait is in the first
    if (std::find(late.begin(), late.end(), r) != late.end()) return;
    try {
      if (barrier)
        group.barrier();
      else
        group.all_reduce(reinterpret_cast<std::byte*>(data.data()), data.size(), DType::kF32);
    } catch (const CommError&) {
      kinds[static_cast<std::size_t>(r)] = "CommError";
      throw;
    }
  });
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string what = barrier ? "barrier" : "all_reduce";
  const std::string want =
      what + ": member(s) " + names + " of the group did not arrive within " + within + " s";
  for (int r = 0; r < n; ++r) {
    if (std::find(late.begin(), late.end(), r) != late.end()) continue;
    EXPECT_EQ(kinds[r], "CommError") << "member " << r << ": " << errors[r];
    EXPECT_NE(errors[r].find(want), std::string::npos)
        << "member " << r << ": expected \"" << want << "\", got: " << errors[r];
    EXPECT_NE(errors[r].find("thread group"), std::string::npos) << errors[r];
  }
  EXPECT_LT(waited, 20.0) << "the deadline was far shorter";
}

TEST(ShmGroupDeadline, AMemberThatNeverArrivesIsNamed) {
  expect_named(2, {1}, true, {}, 0.2, "0.2");
  expect_named(3, {2}, false, {}, 0.2, "0.2");
  expect_named(4, {1, 3}, true, {}, 0.2, "0.2");
  expect_named(4, {0}, false, {}, 0.2, "0.2");
}

TEST(ShmGroupDeadline, TheCallbackSetsTheDeadline) {
  // ShmCommunicator passes the earlier of its own and the watchdog's; here 0.1 s beats 300 s.
  expect_named(
      3, {1}, true, [] { return 0.1; }, 300, "0.1");
}

}  // namespace
}  // namespace tpl
