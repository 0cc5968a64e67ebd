// The SHM communicator's own promises, at 1-4 ranks (the conformance suite in
// communicator_test.cc covers the collectives' semantics):
//  * every sum is the left-to-right fold over members 0..n-1, bit for bit, whatever the size,
//    the chunking (slot size) or the algorithm (one-shot or two-shot);
//  * an addend produced straight into the slot (all_reduce_produced) sums the same;
//  * so all-reducing row chunks (the fused paths) equals all-reducing the whole tensor;
//  * a member that never arrives is a CommError naming it, not a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "tpl/dtype.h"
#include "tpl/error.h"
#include "tpl/process_groups.h"
#include "tpl/shm.h"

namespace tpl {
namespace {

using testing::expect_agreed;
using testing::world;

// Rank r's data: normal values with a wide exponent range, so the order of the sums matters.
std::vector<float> data_of(int r, std::size_t n) {
  std::mt19937 gen(1234 + 17 * r);
  std::normal_distribution<float> d(0.f, 1.f);
  std::uniform_int_distribution<int> e(-12, 12);
  std::vector<float> v(n);
  for (auto& x : v) x = std::ldexp(d(gen), e(gen));
  return v;
}

std::vector<float> fold(int members, std::size_t n) {
  std::vector<float> acc = data_of(0, n);
  for (int k = 1; k < members; ++k) {
    const std::vector<float> v = data_of(k, n);
    for (std::size_t i = 0; i < n; ++i) acc[i] += v[i];
  }
  return acc;
}

std::string first_mismatch(const float* got, const std::vector<float>& want,
                           const std::string& label) {
  for (std::size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      char buf[160];
      std::snprintf(buf, sizeof buf, ": index %zu expected %.9g got %.9g\n", i, double(want[i]),
                    double(got[i]));
      return label + buf;
    }
  return "";
}

struct AlgoCase {
  std::size_t slot, two_shot;
  const char* what;
};
const AlgoCase kCases[] = {{4096, std::size_t(1) << 40, "one-shot, 4 KiB slots"},
                           {4096, 0, "two-shot, 4 KiB slots"},
                           {std::size_t(1) << 20, 256 << 10, "default algorithm, 1 MiB slots"}};

TEST(ShmSums, MemberOrderFoldBitExactAtAnySizeChunkingAndAlgorithm) {
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  const int n = world().size(), me = world().rank();
  std::string fail;
  for (const AlgoCase& s : kCases) {
    ShmOptions o;
    o.slot_bytes = s.slot;
    o.two_shot_bytes = s.two_shot;
    auto comm = make_shm_communicator(world(), o);
    for (std::size_t count : {std::size_t(1), std::size_t(7), std::size_t(1000),
                              std::size_t(4096 + 3), std::size_t(100003)}) {
      const std::vector<float> mine = data_of(me, count);
      Tensor t = Tensor::from_f32(mine, 1, static_cast<std::int64_t>(count), DType::kF32);
      comm->all_reduce(t.view());
      fail += first_mismatch(t.ptr<float>(), fold(n, count),
                             std::string(s.what) + " all_reduce of " + std::to_string(count));
      // The addend produced into the slot where it fits, else into the output: the same fold.
      Tensor produced(DType::kF32, 1, static_cast<std::int64_t>(count));
      comm->all_reduce_produced(produced.view(), [&](TensorView dst) {
        std::memcpy(dst.data(), mine.data(), count * sizeof(float));
      });
      fail +=
          first_mismatch(produced.ptr<float>(), fold(n, count),
                         std::string(s.what) + " all_reduce_produced of " + std::to_string(count));
      // Reduce-scatter: this member's block of the fold.
      Tensor in(DType::kF32, n, static_cast<std::int64_t>(count));
      std::vector<float> want_block(count);
      for (int b = 0; b < n; ++b) {
        const std::vector<float> v = data_of(me + 100 * b, count);
        std::copy(v.begin(), v.end(), in.ptr<float>() + static_cast<std::size_t>(b) * count);
      }
      {
        std::vector<float> acc = data_of(0 + 100 * me, count);
        for (int k = 1; k < n; ++k) {
          const std::vector<float> v = data_of(k + 100 * me, count);
          for (std::size_t i = 0; i < count; ++i) acc[i] += v[i];
        }
        want_block = acc;
      }
      Tensor out(DType::kF32, 1, static_cast<std::int64_t>(count));
      comm->reduce_scatter(in.view(), out.view());
      fail += first_mismatch(out.ptr<float>(), want_block,
                             std::string(s.what) + " reduce_scatter of " + std::to_string(count));
    }
  }
  expect_agreed(world(), fail);
}

TEST(ShmSums, Bf16SumsInF32AndRoundsOnce) {
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  const int n = world().size(), me = world().rank();
  const std::size_t count = 5003;
  ShmOptions o;
  o.slot_bytes = 4096;
  o.two_shot_bytes = 0;
  auto comm = make_shm_communicator(world(), o);
  // Inputs are bf16 values; the expected sum folds their f32 values and rounds once.
  std::vector<float> want(count, 0.f);
  for (int k = 0; k < n; ++k) {
    const std::vector<float> v = data_of(k, count);
    for (std::size_t i = 0; i < count; ++i)
      want[i] = k == 0 ? round_to_bf16(v[i]) : want[i] + round_to_bf16(v[i]);
  }
  for (auto& w : want) w = round_to_bf16(w);
  Tensor t = Tensor::from_f32(data_of(me, count), 1, count, DType::kBF16);
  comm->all_reduce(t.view());
  std::vector<float> got(count);
  convert_to_f32(t.data(), DType::kBF16, got.data(), count);
  expect_agreed(world(), first_mismatch(got.data(), want, "bf16 all_reduce"));
}

TEST(ShmSums, RowChunksEqualTheWholeTensor) {
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  const int me = world().rank();
  const std::int64_t rows = 37, cols = 515;
  auto comm = make_shm_communicator(world());
  Tensor whole = Tensor::from_f32(data_of(me, rows * cols), rows, cols, DType::kF32);
  Tensor chunked = Tensor::copy_of(whole.view());
  comm->all_reduce(whole.view());
  for (std::int64_t r = 0; r < rows; r += 10)  // as a fused path's chunks of rows
    comm->all_reduce(chunked.view().row_slice(r, std::min<std::int64_t>(10, rows - r)));
  expect_agreed(world(), testing::compare(chunked.view(), whole.view(), 0, 0, "row chunks"));
}

TEST(ShmErrors, AMemberThatNeverArrivesIsNamed) {
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  if (world().size() < 2) GTEST_SKIP() << "needs a second member";
  ShmOptions o;
  o.timeout_s = 0.3;
  auto comm = make_shm_communicator(world(), o);
  // Across nodes (TPL_NODE_SPLIT) the barrier is MPI's, whose hangs the watchdog ends.
  if (comm->name() != "shm") GTEST_SKIP() << "the group is " << comm->name();
  std::string fail;
  if (world().rank() == 0) {
    const std::string msg = testing::message_of([&] { comm->barrier(); });
    std::string late;
    for (int k = 1; k < world().size(); ++k) late += (late.empty() ? "" : ", ") + std::to_string(k);
    if (msg.find("barrier: member(s) " + late + " of the group did not arrive within 0.3 s") ==
        std::string::npos)
      fail = "expected a CommError naming members " + late + ", got: " + msg;
  }
  // The others never enter the barrier; everyone meets again in MPI to free the window.
  world().barrier();
  expect_agreed(world(), fail);
}

// With the host cut in two (TPL_NODE_SPLIT=2, the *_hier entries), world ranks [0, n/2) and
// [n/2, n) are two nodes. A group that takes them in the order 0, n-1, 1, 2, ... visits a node
// twice, which the hierarchical sums cannot serve: a clear error on every member, not a hang.
TEST(ShmErrors, NodesOutOfOrderAreAClearError) {
  const char* split = std::getenv("TPL_NODE_SPLIT");
  if (!split || std::string(split) != "2") GTEST_SKIP() << "needs TPL_NODE_SPLIT=2";
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  const int n = world().size(), me = world().rank();
  if (n < 3) GTEST_SKIP() << "needs 3 ranks to interleave two nodes";
  auto shuffled = world().split(0, me == 0 ? 0 : me == n - 1 ? 1 : me + 1);
  const std::string msg = testing::message_of([&] { make_shm_communicator(*shuffled); });
  std::string fail;
  if (msg.find("needs each node's ranks consecutive in the group") == std::string::npos ||
      msg.find("2 nodes: ranks 0,2") == std::string::npos)
    fail = "rank " + std::to_string(me) + ": expected the out-of-order layout named, got: " + msg;
  expect_agreed(world(), fail);
}

// A slot too small for one element per member a round would never advance (a hang before the
// check); every rank refuses it alike, even when only one rank's options are bad.
TEST(ShmErrors, TinySlotsAreRefusedOnEveryRank) {
  if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
  const int me = world().rank();
  std::string fail;
  for (std::size_t bad : {std::size_t(64), std::size_t(4096 + 8)}) {
    ShmOptions o;
    if (me == 0) o.slot_bytes = bad;
    const std::string msg = testing::message_of([&] { make_shm_communicator(world(), o); });
    if (msg.find("slot_bytes must be a multiple of 64 of at least 4096") == std::string::npos)
      fail += "rank " + std::to_string(me) + ", rank 0 slot_bytes " + std::to_string(bad) +
              ": expected the slot size refused, got: " + (msg.empty() ? "no error" : msg) + "\n";
  }
  expect_agreed(world(), fail);
}

// A plan's per-group communicator: split_as makes the kind asked for from a world of either
// kind (and from shm+mpi), ranks passing a negative color get none, and an SHM group's sums
// stay the member-order fold.
TEST(ShmGroups, SplitAsMakesTheKindAskedForWhateverServesTheParent) {
  Communicator& w = world();
  const int me = w.rank(), n = w.size();
  std::string fail;
  auto check = [&](Communicator* c, CommKind kind, int members, const std::string& what) {
    if (!c) return fail += what + ": no communicator on rank " + std::to_string(me) + "\n", void();
    if (c->kind_name() != comm_kind_name(kind) || c->size() != members)
      return fail += what + ": rank " + std::to_string(me) + " got " + c->name() + " of " +
                     std::to_string(c->size()) + " ranks\n",
             void();
    std::vector<float> v = data_of(c->rank(), 1001);
    c->all_reduce(TensorView(v.data(), DType::kF32, 1, 1001));
    const std::vector<float> want = fold(members, 1001);
    if (kind == CommKind::kShm || members <= 2) {
      fail += first_mismatch(v.data(), want, what + " on rank " + std::to_string(me));
    } else {  // MPI picks its own order: within the rounding of a sum of n terms
      std::vector<double> mag(want.size());
      for (int k = 0; k < members; ++k) {
        const std::vector<float> x = data_of(k, want.size());
        for (std::size_t i = 0; i < want.size(); ++i) mag[i] += std::fabs(x[i]);
      }
      for (std::size_t i = 0; i < want.size(); ++i) {
        if (std::fabs(double(v[i]) - want[i]) > 4 * members * 6e-8 * mag[i]) {
          fail += what + " on rank " + std::to_string(me) + ": index " + std::to_string(i) +
                  " expected " + std::to_string(want[i]) + " got " + std::to_string(v[i]) + "\n";
          break;
        }
      }
    }
  };
  for (const CommKind kind : {CommKind::kMpi, CommKind::kShm}) {
    const std::string k = comm_kind_name(kind);
    std::unique_ptr<Communicator> sub = w.split_as(0, me, kind);
    check(sub.get(), kind, n, w.name() + " -> " + k);
    // And back: the other kind from this one.
    const CommKind other = kind == CommKind::kMpi ? CommKind::kShm : CommKind::kMpi;
    if (sub) {
      std::unique_ptr<Communicator> back = sub->split_as(0, me, other);
      check(back.get(), other, n, w.name() + " -> " + k + " -> " + comm_kind_name(other));
    }
    // Rank 0 out: the others form a group of n - 1.
    std::unique_ptr<Communicator> part = w.split_as(me == 0 ? -1 : 0, me, kind);
    if (me == 0 && part) fail += "rank 0 passed a negative color and got a " + k + " group\n";
    if (me > 0) check(part.get(), kind, n - 1, w.name() + " -> " + k + " without rank 0");
  }
  const ProcessGroups pg(w, ParallelLayout{1, 1, n}, GroupSizes{}, {{"tp", CommKind::kShm}});
  const auto comms = pg.communicators();
  if (comms.size() != 1 || comms[0].first != "tp" || comms[0].second != &pg.tp())
    fail += "communicators() does not list the TP group alone on rank " + std::to_string(me) + "\n";
  check(&pg.tp(), CommKind::kShm, n, "ProcessGroups tp: shm");
  expect_agreed(w, fail);
}

TEST(ShmErrors, OnlyOverMpi) {
  LocalCommunicator local;
  const std::string msg = testing::message_of([&] { make_shm_communicator(local); });
  EXPECT_NE(msg.find("an SHM communicator is built over an MPI communicator, not 'local'"),
            std::string::npos)
      << msg;
}

}  // namespace
}  // namespace tpl
