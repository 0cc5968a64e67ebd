// Conformance suite for every Communicator implementation: the same tests run on a
// LocalCommunicator, on MpiCommunicator over the test world, and on an MPI sub-communicator
// (world split by rank parity). Expected values are closed-form functions of (member, row,
// col), so every rank knows every other rank's data without communicating. Verdicts go
// through expect_agreed on the world, so a failure on any rank fails every rank and names it.
#include <gtest/gtest.h>

#include <cstdlib>

#include <chrono>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "harness.h"
#include "tpl/backends.h"
#include "tpl/communicator.h"
#include "tpl/error.h"
#include "tpl/shm.h"
#include "tpl/tensor.h"

namespace tpl {
namespace {

using testing::compare;
using testing::expect_agreed;
using testing::world;

constexpr double kSentinel = -99;  // fills padding and outputs; exact in every dtype

const std::vector<std::pair<std::int64_t, std::int64_t>> kShapes = {
    {1, 1}, {1, 3}, {1, 129}, {7, 1}, {7, 3}, {7, 129}, {13, 1}, {13, 3}, {13, 129}};
const std::vector<DType> kSumTypes = {DType::kF32, DType::kI32, DType::kBF16, DType::kF16};
const std::vector<DType> kAllTypes = {DType::kF32, DType::kI32, DType::kBF16, DType::kF16,
                                      DType::kI8};

// Element (r, c) of member k's data. Every value and every sum over up to 4 members is exact
// in its dtype: f32/int32 stay below 2^24, 16-bit floats below 2^8, int8 within [-125, 125].
double val(DType t, int k, std::int64_t r, std::int64_t c) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return k * 100000.0 + r * 1000.0 + c;
    case DType::kBF16:
    case DType::kF16:
      return (k + 1) * 8.0 + static_cast<double>((r * 3 + c) % 16);
    case DType::kI8:
      return static_cast<double>((k * 37 + r * 11 + c) % 251) - 125;
  }
  return 0;
}

// Closed form of sum over k in [0, n) of val(t, k, r, c).
double sum_val(DType t, int n, std::int64_t r, std::int64_t c) {
  if (t == DType::kBF16 || t == DType::kF16)
    return 8.0 * n * (n + 1) / 2 + n * static_cast<double>((r * 3 + c) % 16);
  return 100000.0 * n * (n - 1) / 2 + n * (r * 1000.0 + c);
}

// A tensor seen through `view`: either the whole (contiguous) storage or, when strided, the
// middle columns of a wider storage whose padding holds kSentinel. Comparing whole storages
// also checks that a collective never writes outside its view.
struct Buf {
  Tensor storage;
  TensorView view;
};

using Gen = std::function<double(std::int64_t, std::int64_t)>;

Buf make_buf(DType t, std::int64_t rows, std::int64_t cols, bool strided, const Gen& gen) {
  Buf b;
  b.storage = Tensor(t, rows, strided ? cols + 3 : cols);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < b.storage.cols(); ++c) set_f32(b.storage, r, c, kSentinel);
  b.view = strided ? b.storage.view().col_slice(1, cols) : b.storage.view();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) set_f32(b.view, r, c, static_cast<float>(gen(r, c)));
  return b;
}

Buf sentinel_buf(DType t, std::int64_t rows, std::int64_t cols, bool strided) {
  return make_buf(t, rows, cols, strided, [](std::int64_t, std::int64_t) { return kSentinel; });
}

std::string tag(const char* op, DType t, std::int64_t rows, std::int64_t cols,
                const std::string& extra = "") {
  return std::string(op) + " " + dtype_name(t) + "[" + std::to_string(rows) + "," +
         std::to_string(cols) + "]" + (extra.empty() ? "" : " " + extra);
}

// Appends to `fail` an exact comparison of the views (indices are view coordinates), then of
// the whole storages, which catches writes into the padding around a strided view.
void check(std::string& fail, const Buf& actual, const Buf& expected, const std::string& label) {
  std::string m = compare(actual.view, expected.view, 0, 0, label);
  if (m.empty())
    m = compare(actual.storage, expected.storage, 0, 0, label + " (storage around the view)");
  if (!m.empty()) fail += m + "\n";
}

// Polls test() until it reports completion (bounded so a lost completion fails, not hangs).
bool poll_until_done(Work& w) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!w.test())
    if (std::chrono::steady_clock::now() > deadline) return false;
  return true;
}

enum class Mode { kBlocking, kWait, kTest };
const char* mode_name(Mode m) {
  return m == Mode::kBlocking ? "blocking" : m == Mode::kWait ? "async+wait" : "async+test";
}
void finish(WorkPtr w, Mode m, std::string& fail, const std::string& label) {
  if (m == Mode::kTest) {
    if (!poll_until_done(*w)) fail += label + ": test() never returned true\n";
    if (!w->test()) fail += label + ": test() returned false after completion\n";
  } else {
    w->wait();
  }
}

// The implementation under test, chosen by the test parameter.
class CommConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string& impl = GetParam();
    if (impl == "local") {
      owned_ = std::make_unique<LocalCommunicator>();
    } else if (impl == "mpi_split") {
      // Even and odd world ranks form two groups; collectives run inside each group.
      owned_ = world().split(world().rank() % 2, world().rank());
    } else if (impl == "shm_world" || impl == "shm_split") {
      if (world().name() != "mpi") GTEST_SKIP() << "the world is " << world().name();
      // Small slots, so every collective here runs through several chunks and both all-reduce
      // algorithms.
      ShmOptions o;
      o.slot_bytes = 4096;
      o.two_shot_bytes = 1024;
      if (impl == "shm_world") {
        o.mpi_move_bytes = 0;  // every collective through the slots
        owned_ = make_shm_communicator(world(), o);
      } else {
        o.mpi_move_bytes = 2048;  // larger data movement handed to MPI
        auto half = world().split(world().rank() % 2, world().rank());
        owned_ = make_shm_communicator(*half, o);
      }
    }
    comm_ = owned_ ? owned_.get() : &world();
  }
  Communicator& comm() { return *comm_; }
  int n() const { return comm_->size(); }
  int me() const { return comm_->rank(); }

 private:
  std::unique_ptr<Communicator> owned_;
  Communicator* comm_ = nullptr;
};

TEST_P(CommConformance, Identity) {
  std::string fail;
  const int wr = world().rank(), wn = world().size();
  if (GetParam() == "local") {
    if (comm().size() != 1 || comm().rank() != 0 || comm().name() != "local")
      fail += "local communicator is not a size-1 group named local\n";
  } else if (GetParam() == "mpi_world" || GetParam() == "shm_world") {
    // TPL_NODE_SPLIT=2 cuts this host in two "nodes": a world of 2+ ranks spans both.
    const char* split = std::getenv("TPL_NODE_SPLIT");
    const bool spans = split && std::string(split) == "2" && wn > 1;
    const std::string want = GetParam() == "mpi_world" ? "mpi" : spans ? "shm+mpi" : "shm";
    if (comm().name() != want || comm().size() != wn || comm().rank() != wr)
      fail += "world communicator '" + comm().name() + "' (want '" + want +
              "') disagrees with the world rank/size\n";
  } else {
    const int expect_size = (wn - wr % 2 + 1) / 2;  // ranks with the same parity
    if (comm().size() != expect_size || comm().rank() != wr / 2)
      fail += "split group: size " + std::to_string(comm().size()) + " rank " +
              std::to_string(comm().rank()) + ", expected size " + std::to_string(expect_size) +
              " rank " + std::to_string(wr / 2) + "\n";
  }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, AllReduce) {
  std::string fail;
  for (Mode mode : {Mode::kBlocking, Mode::kWait, Mode::kTest})
    for (DType t : kSumTypes)
      for (auto [rows, cols] : kShapes)
        for (bool strided : {false, true}) {
          const std::string label = tag("all_reduce", t, rows, cols,
                                        std::string(strided ? "strided " : "") + mode_name(mode));
          Buf io = make_buf(t, rows, cols, strided,
                            [&, t = t](auto r, auto c) { return val(t, me(), r, c); });
          if (mode == Mode::kBlocking)
            comm().all_reduce(io.view);
          else
            finish(comm().iall_reduce(io.view), mode, fail, label);
          const Buf want = make_buf(t, rows, cols, strided,
                                    [&, t = t](auto r, auto c) { return sum_val(t, n(), r, c); });
          check(fail, io, want, label);
        }
  expect_agreed(world(), fail);
}

// all_reduce_produced: the producer writes this member's addend into the view it is given, once;
// the sum lands in `out`. SHM hands it the rank's slot when `out` is contiguous, fits one and
// takes the two-shot path (here 1024 to 4096 bytes), which the test checks, so the slot path
// cannot silently fall back.
TEST_P(CommConformance, AllReduceOfAProducedAddend) {
  std::string fail;
  const bool shm = GetParam().rfind("shm", 0) == 0 && comm().name() == "shm";
  for (DType t : kSumTypes)
    for (auto [rows, cols] : kShapes)
      for (bool strided : {false, true}) {
        const std::string label =
            tag("all_reduce_produced", t, rows, cols, strided ? "strided" : "");
        Buf out = sentinel_buf(t, rows, cols, strided);
        int calls = 0;
        bool into_out = false;
        comm().all_reduce_produced(out.view, [&, t = t](TensorView dst) {
          ++calls;
          into_out = dst.data() == out.view.data();
          if (dst.dtype() != t || dst.rows() != out.view.rows() || dst.cols() != out.view.cols())
            fail += label + ": the producer got " + dst.describe() + "\n";
          for (std::int64_t r = 0; r < dst.rows(); ++r)
            for (std::int64_t c = 0; c < dst.cols(); ++c)
              set_f32(dst, r, c, static_cast<float>(val(t, me(), r, c)));
        });
        if (calls != 1) fail += label + ": the producer ran " + std::to_string(calls) + " times\n";
        const bool slot = shm && n() > 1 && out.view.contiguous() && out.view.nbytes() >= 1024 &&
                          out.view.nbytes() <= 4096;
        if (into_out == slot)
          fail += label + (slot ? ": written into out, not the slot\n" : ": not into out\n");
        const Buf want = make_buf(t, rows, cols, strided,
                                  [&, t = t](auto r, auto c) { return sum_val(t, n(), r, c); });
        check(fail, out, want, label);
      }
  // An exception from the producer (thrown on every member alike) propagates, and the
  // communicator is still usable.
  try {
    Buf out = sentinel_buf(DType::kF32, 2, 3, false);
    comm().all_reduce_produced(out.view, [](TensorView) { throw std::runtime_error("no GEMM"); });
    fail += "a throwing producer: nothing thrown\n";
  } catch (const std::runtime_error& e) {
    if (std::string(e.what()) != "no GEMM") fail += std::string("wrong exception: ") + e.what();
  }
  Buf io = make_buf(DType::kF32, 1, 5, false,
                    [&](auto r, auto c) { return val(DType::kF32, me(), r, c); });
  comm().all_reduce(io.view);
  check(fail, io,
        make_buf(DType::kF32, 1, 5, false,
                 [&](auto r, auto c) { return sum_val(DType::kF32, n(), r, c); }),
        "all_reduce after a throwing producer");
  expect_agreed(world(), fail);
}

// f32 staging rounds once: member 0 holds 2^p (p = 8 for bf16, 11 for f16, where the spacing
// of representable values becomes 2) and every other member holds 1. Pairwise 16-bit sums
// round each 2^p + 1 back to 2^p (tie to even); the f32 sum 2^p + (n-1) is rounded once.
TEST_P(CommConformance, HalfSumsRoundOnce) {
  std::string fail;
  for (DType t : {DType::kBF16, DType::kF16}) {
    const float big = t == DType::kBF16 ? 256.f : 2048.f;
    const auto round16 = [t](float x) {
      return t == DType::kBF16 ? round_to_bf16(x) : f16_bits_to_f32(f32_to_f16_bits(x));
    };
    float pairwise = 0;
    for (int k = 0; k < n(); ++k) pairwise = round16(pairwise + (k == 0 ? big : 1.f));
    const float once = round16(big + static_cast<float>(n() - 1));
    if (n() >= 3 && pairwise == once) fail += "test data does not separate the two roundings\n";
    for (Mode mode : {Mode::kBlocking, Mode::kTest}) {
      const std::string label = tag("all_reduce round-once", t, 3, 5, mode_name(mode));
      Buf io =
          make_buf(t, 3, 5, mode == Mode::kTest, [&](auto, auto) { return me() == 0 ? big : 1.0; });
      if (mode == Mode::kBlocking)
        comm().all_reduce(io.view);
      else
        finish(comm().iall_reduce(io.view), mode, fail, label);
      check(fail, io, make_buf(t, 3, 5, mode == Mode::kTest, [&](auto, auto) { return once; }),
            label);

      // Same through reduce_scatter: every output row sums to the once-rounded value.
      Buf in = make_buf(t, 2 * n(), 5, false, [&](auto, auto) { return me() == 0 ? big : 1.0; });
      Buf out = sentinel_buf(t, 2, 5, false);
      if (mode == Mode::kBlocking)
        comm().reduce_scatter(in.view, out.view);
      else
        finish(comm().ireduce_scatter(in.view, out.view), mode, fail, label);
      check(fail, out, make_buf(t, 2, 5, false, [&](auto, auto) { return once; }),
            tag("reduce_scatter round-once", t, 2 * n(), 5, mode_name(mode)));
    }
  }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, ReduceScatter) {
  std::string fail;
  for (Mode mode : {Mode::kBlocking, Mode::kWait, Mode::kTest})
    for (DType t : kSumTypes)
      for (auto [rows, cols] : kShapes)
        for (int layout = 0; layout < 4; ++layout) {
          const bool in_strided = layout & 1, out_strided = layout & 2;
          const std::string label = tag("reduce_scatter", t, rows, cols,
                                        std::string(in_strided ? "in-strided " : "") +
                                            (out_strided ? "out-strided " : "") + mode_name(mode));
          Buf in = make_buf(t, n() * rows, cols, in_strided,
                            [&, t = t](auto r, auto c) { return val(t, me(), r, c); });
          Buf out = sentinel_buf(t, rows, cols, out_strided);
          if (mode == Mode::kBlocking)
            comm().reduce_scatter(in.view, out.view);
          else
            finish(comm().ireduce_scatter(in.view, out.view), mode, fail, label);
          const Buf want =
              make_buf(t, rows, cols, out_strided, [&, t = t, rows = rows](auto r, auto c) {
                return sum_val(t, n(), me() * rows + r, c);
              });
          check(fail, out, want, label);
        }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, AllGather) {
  std::string fail;
  for (Mode mode : {Mode::kBlocking, Mode::kWait, Mode::kTest})
    for (int dim : {0, 1, -1})
      for (DType t : kAllTypes)
        for (auto [rows, cols] : kShapes)
          for (int layout = 0; layout < 4; ++layout) {
            const bool in_strided = layout & 1, out_strided = layout & 2;
            const std::string label =
                tag("all_gather", t, rows, cols,
                    "dim " + std::to_string(dim) + (in_strided ? " in-strided" : "") +
                        (out_strided ? " out-strided " : " ") + mode_name(mode));
            Buf in = make_buf(t, rows, cols, in_strided,
                              [&, t = t](auto r, auto c) { return val(t, me(), r, c); });
            const std::int64_t out_rows = dim == 0 ? n() * rows : rows;
            const std::int64_t out_cols = dim == 0 ? cols : n() * cols;
            Buf out = sentinel_buf(t, out_rows, out_cols, out_strided);
            if (mode == Mode::kBlocking)
              comm().all_gather(in.view, out.view, dim);
            else
              finish(comm().iall_gather(in.view, out.view, dim), mode, fail, label);
            const Buf want =
                make_buf(t, out_rows, out_cols, out_strided,
                         [&, t = t, rows = rows, cols = cols](auto r, auto c) {
                           return dim == 0 ? val(t, static_cast<int>(r / rows), r % rows, c)
                                           : val(t, static_cast<int>(c / cols), r, c % cols);
                         });
            check(fail, out, want, label);
          }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, AllToAll) {
  std::string fail;
  // in and out shapes with the same element count; the second pair makes pieces cross rows
  // and gives out a different shape from in.
  for (Mode mode : {Mode::kBlocking, Mode::kWait, Mode::kTest})
    for (DType t : kAllTypes)
      for (auto [rows, cols] : kShapes)
        for (bool reshaped : {false, true}) {
          const std::int64_t in_rows = n() * rows, in_cols = cols;
          const std::int64_t out_rows = reshaped ? 1 : in_rows;
          const std::int64_t out_cols = reshaped ? in_rows * in_cols : in_cols;
          const std::string label =
              tag("all_to_all", t, in_rows, in_cols,
                  (reshaped ? "to a row " : "") + std::string(mode_name(mode)));
          Buf in = make_buf(t, in_rows, in_cols, false,
                            [&, t = t](auto r, auto c) { return val(t, me(), r, c); });
          Buf out = sentinel_buf(t, out_rows, out_cols, false);
          if (mode == Mode::kBlocking)
            comm().all_to_all(in.view, out.view);
          else
            finish(comm().iall_to_all(in.view, out.view), mode, fail, label);
          // Flat element j*P + i of member me's out is flat element me*P + i of member j's in.
          const std::int64_t piece = in_rows * in_cols / n();
          const Buf want = make_buf(t, out_rows, out_cols, false, [&, t = t](auto r, auto c) {
            const std::int64_t f = r * out_cols + c;
            const std::int64_t src = me() * piece + f % piece;
            return val(t, static_cast<int>(f / piece), src / in_cols, src % in_cols);
          });
          check(fail, out, want, label);
        }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, AllToAllUnequalPieces) {
  std::string fail;
  // Member i sends member k a piece of 1 + (i + 2k) % 3 rows of `cols` (some empty when a
  // member has one row to spare), as FlashComm2's uneven head slices do.
  auto piece_rows = [](int from, int to) { return std::int64_t{(from + 2 * to) % 3}; };
  for (DType t : kAllTypes)
    for (std::int64_t cols : {std::int64_t{1}, std::int64_t{5}}) {
      std::vector<std::int64_t> send, recv;
      std::int64_t in_rows = 0, out_rows = 0;
      for (int k = 0; k < n(); ++k) {
        send.push_back(piece_rows(me(), k) * cols);
        recv.push_back(piece_rows(k, me()) * cols);
        in_rows += piece_rows(me(), k);
        out_rows += piece_rows(k, me());
      }
      const std::string label = tag("all_to_all_v", t, in_rows, cols, "");
      // Row r of member i's input, in its piece for member k, is val(i, k, r - piece start).
      std::vector<int> to_of(static_cast<std::size_t>(in_rows));
      std::vector<std::int64_t> at_of(to_of.size());
      for (int k = 0, r = 0; k < n(); ++k)
        for (std::int64_t j = 0; j < piece_rows(me(), k); ++j, ++r) {
          to_of[static_cast<std::size_t>(r)] = k;
          at_of[static_cast<std::size_t>(r)] = j;
        }
      Buf in =
          make_buf(t, std::max<std::int64_t>(in_rows, 1), cols, false, [&, t = t](auto r, auto c) {
            if (in_rows == 0) return 0.0;
            return val(t, me() * 4 + to_of[static_cast<std::size_t>(r)],
                       at_of[static_cast<std::size_t>(r)], c);
          });
      Buf out = sentinel_buf(t, std::max<std::int64_t>(out_rows, 1), cols, false);
      TensorView iv = in_rows ? in.view : in.view.row_slice(0, 0);
      TensorView ov = out_rows ? out.view : out.view.row_slice(0, 0);
      comm().all_to_all_v(iv, send, ov, recv);
      if (out_rows == 0) continue;
      std::vector<int> from_of(static_cast<std::size_t>(out_rows));
      std::vector<std::int64_t> j_of(from_of.size());
      for (int k = 0, r = 0; k < n(); ++k)
        for (std::int64_t j = 0; j < piece_rows(k, me()); ++j, ++r) {
          from_of[static_cast<std::size_t>(r)] = k;
          j_of[static_cast<std::size_t>(r)] = j;
        }
      const Buf want = make_buf(t, out_rows, cols, false, [&, t = t](auto r, auto c) {
        return val(t, from_of[static_cast<std::size_t>(r)] * 4 + me(),
                   j_of[static_cast<std::size_t>(r)], c);
      });
      check(fail, out, want, label);
    }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, BroadcastFromEveryRoot) {
  std::string fail;
  for (Mode mode : {Mode::kBlocking, Mode::kWait, Mode::kTest})
    for (int root = 0; root < n(); ++root)
      for (DType t : kAllTypes)
        for (auto [rows, cols] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {7, 3}, {13, 129}})
          for (bool strided : {false, true}) {
            const std::string label = tag(
                "broadcast", t, rows, cols,
                "root " + std::to_string(root) + (strided ? " strided " : " ") + mode_name(mode));
            // Non-roots start with their own data, which must be overwritten.
            Buf buf = make_buf(t, rows, cols, strided,
                               [&, t = t](auto r, auto c) { return val(t, me(), r, c); });
            if (mode == Mode::kBlocking)
              comm().broadcast(buf.view, root);
            else
              finish(comm().ibroadcast(buf.view, root), mode, fail, label);
            const Buf want = make_buf(t, rows, cols, strided,
                                      [&, t = t](auto r, auto c) { return val(t, root, r, c); });
            check(fail, buf, want, label);
          }
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, AsyncOverlapAndOutOfOrderWaits) {
  std::string fail;
  // Several collectives in flight at once, progressed by test() from a "compute" loop and
  // completed in an order different from the one they were started in.
  const DType t = DType::kBF16;
  Buf ar = make_buf(t, 13, 129, true, [&](auto r, auto c) { return val(t, me(), r, c); });
  Buf ag_in = make_buf(t, 7, 3, true, [&](auto r, auto c) { return val(t, me(), r, c); });
  Buf ag_out = sentinel_buf(t, 7, 3 * n(), true);
  Buf bc = make_buf(DType::kF32, 7, 129, false,
                    [&](auto r, auto c) { return val(DType::kF32, me(), r, c); });
  WorkPtr w1 = comm().iall_reduce(ar.view);
  WorkPtr w2 = comm().iall_gather(ag_in.view, ag_out.view, 1);
  WorkPtr w3 = comm().ibroadcast(bc.view, n() - 1);
  volatile double sink = 0;
  bool done1 = false, done2 = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!(done1 && done2) && std::chrono::steady_clock::now() < deadline) {
    for (int i = 0; i < 1000; ++i) sink = sink + i * 0.5;  // a compute chunk
    if (!done2) done2 = w2->test();
    if (!done1) done1 = w1->test();
  }
  if (!(done1 && done2)) fail += "async: test() did not complete within 60 s\n";
  w3->wait();
  w3->wait();  // waiting twice is harmless
  check(fail, ar, make_buf(t, 13, 129, true, [&](auto r, auto c) { return sum_val(t, n(), r, c); }),
        "async all_reduce");
  check(fail, ag_out,
        make_buf(t, 7, 3 * n(), true,
                 [&](auto r, auto c) { return val(t, static_cast<int>(c / 3), r, c % 3); }),
        "async all_gather dim 1");
  check(fail, bc,
        make_buf(DType::kF32, 7, 129, false,
                 [&](auto r, auto c) { return val(DType::kF32, n() - 1, r, c); }),
        "async broadcast");
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, UnfinishedWorkWaitsOnDestruction) {
  std::string fail;
  const DType t = DType::kF16;
  Buf io = make_buf(t, 7, 129, true, [&](auto r, auto c) { return val(t, me(), r, c); });
  Buf rs_in = make_buf(DType::kF32, 7 * n(), 3, true,
                       [&](auto r, auto c) { return val(DType::kF32, me(), r, c); });
  Buf rs_out = sentinel_buf(DType::kF32, 7, 3, true);
  {
    WorkPtr a = comm().iall_reduce(io.view);
    WorkPtr b = comm().ireduce_scatter(rs_in.view, rs_out.view);
  }  // destroyed without wait(): the destructors finish both, including the copy-back
  check(fail, io, make_buf(t, 7, 129, true, [&](auto r, auto c) { return sum_val(t, n(), r, c); }),
        "all_reduce finished by ~Work");
  check(fail, rs_out,
        make_buf(DType::kF32, 7, 3, true,
                 [&](auto r, auto c) { return sum_val(DType::kF32, n(), me() * 7 + r, c); }),
        "reduce_scatter finished by ~Work");
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, EmptyTensors) {
  std::string fail;
  Tensor e(DType::kF32, 0, 3), e_out(DType::kF32, 0, 3 * n());
  comm().all_reduce(e);
  comm().all_gather(e, e_out, 1);
  comm().broadcast(e, 0);
  WorkPtr w = comm().iall_reduce(e);
  if (!w->test()) fail += "iall_reduce of an empty tensor is not complete at once\n";
  expect_agreed(world(), fail);
}

// Calls `f`, expecting InvalidArgument whose message names this member's rank.
void expect_invalid(std::string& fail, int rank, const std::string& label,
                    const std::function<void()>& f) {
  try {
    f();
    fail += label + ": no exception\n";
  } catch (const InvalidArgument& e) {
    const std::string want = "[rank " + std::to_string(rank) + "]";
    if (std::string(e.what()).find(want) == std::string::npos)
      fail += label + ": message lacks '" + want + "': " + e.what() + "\n";
  } catch (const std::exception& e) {
    fail += label + ": wrong exception type: " + e.what() + "\n";
  }
}

TEST_P(CommConformance, ValidationErrorsNameTheRank) {
  std::string fail;
  const int r = me();
  Tensor a(DType::kF32, 4 * n(), 3), b(DType::kF32, 4, 3), i8(DType::kI8, 2, 2);
  Tensor wide(DType::kF32, 4, 4), odd(DType::kF32, 1, 4 * n() + 1);
  expect_invalid(fail, r, "reduce_scatter wrong rows",
                 [&] { comm().reduce_scatter(a.view().row_slice(0, 4 * n() - 1), b); });
  expect_invalid(fail, r, "reduce_scatter wrong cols", [&] { comm().reduce_scatter(a, wide); });
  expect_invalid(fail, r, "all_reduce int8", [&] { comm().all_reduce(i8); });
  expect_invalid(fail, r, "iall_reduce int8", [&] { comm().iall_reduce(i8); });
  expect_invalid(fail, r, "reduce_scatter int8", [&] {
    Tensor x(DType::kI8, 2 * n(), 2), y(DType::kI8, 2, 2);
    comm().reduce_scatter(x, y);
  });
  expect_invalid(fail, r, "all_gather wrong out", [&] { comm().all_gather(b, wide, 0); });
  expect_invalid(fail, r, "all_gather dim 2", [&] { comm().all_gather(b, a, 2); });
  expect_invalid(fail, r, "iall_gather dtype mismatch", [&] {
    Tensor x(DType::kBF16, 4 * n(), 3);
    comm().iall_gather(b, x, 0);
  });
  expect_invalid(fail, r, "all_to_all numel mismatch", [&] { comm().all_to_all(a, wide); });
  if (n() > 1) {
    expect_invalid(fail, r, "all_to_all indivisible", [&] {
      Tensor x(DType::kF32, 1, 4 * n() + 1);
      comm().all_to_all(odd, x);
    });
  }
  expect_invalid(fail, r, "all_to_all strided", [&] {
    comm().all_to_all(wide.view().col_slice(0, 2), wide.view().col_slice(2, 2));
  });
  // Bad counts are refused locally, the same on every member.
  Tensor va(DType::kF32, n(), 2), vb(DType::kF32, n(), 2);
  const std::vector<std::int64_t> twos(static_cast<std::size_t>(n()), 2);
  if (n() > 1)
    expect_invalid(fail, r, "all_to_all_v too few counts",
                   [&] { comm().all_to_all_v(va, {2}, vb, twos); });
  expect_invalid(fail, r, "all_to_all_v counts do not add up", [&] {
    std::vector<std::int64_t> more = twos;
    more[0] += 1;
    comm().all_to_all_v(va, more, vb, twos);
  });
  expect_invalid(fail, r, "broadcast root out of range", [&] { comm().broadcast(b, n()); });
  expect_invalid(fail, r, "ibroadcast negative root", [&] { comm().ibroadcast(b, -1); });
  if (comm().supports(Collective::kAllReduce, DType::kI8) ||
      !comm().supports(Collective::kAllGather, DType::kI8) ||
      !comm().supports(Collective::kAllReduce, DType::kBF16))
    fail += "supports() disagrees with the contract\n";
  // A failed validation sent nothing: the group is still in step.
  Buf io = make_buf(DType::kF32, 1, 3, false,
                    [&](auto rr, auto c) { return val(DType::kF32, me(), rr, c); });
  comm().all_reduce(io.view);
  check(fail, io,
        make_buf(DType::kF32, 1, 3, false,
                 [&](auto rr, auto c) { return sum_val(DType::kF32, n(), rr, c); }),
        "all_reduce after validation errors");
  expect_agreed(world(), fail);
}

TEST_P(CommConformance, SplitAndAllTrue) {
  std::string fail;
  // Negative color: no group. Member 0 opts out, the rest form one group in reverse order.
  auto sub = comm().split(me() == 0 ? -1 : 0, -me());
  if (me() == 0) {
    if (sub) fail += "split with a negative color returned a communicator\n";
  } else if (!sub) {
    fail += "split returned nullptr for a non-negative color\n";
  } else {
    if (sub->size() != n() - 1 || sub->rank() != n() - 1 - me())
      fail += "split by key: size " + std::to_string(sub->size()) + " rank " +
              std::to_string(sub->rank()) + "\n";
    Buf io = make_buf(DType::kI32, 1, 3, false,
                      [&](auto, auto c) { return static_cast<double>(me() * 10 + c); });
    sub->all_reduce(io.view);
    // Members 1..n-1: sum of 10*k + c.
    const double tens = 10.0 * (n() - 1) * n() / 2;
    check(fail, io,
          make_buf(DType::kI32, 1, 3, false,
                   [&](auto, auto c) { return tens + (n() - 1) * static_cast<double>(c); }),
          "all_reduce inside a keyed split");
  }
  if (!comm().all_true(true)) fail += "all_true(true) is false\n";
  if (comm().all_true(me() != n() - 1)) fail += "all_true with one false member is true\n";
  comm().barrier();
  expect_agreed(world(), fail);
}

INSTANTIATE_TEST_SUITE_P(Impl, CommConformance,
                         ::testing::Values("local", "mpi_world", "mpi_split", "shm_world",
                                           "shm_split"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
// A session attached to MPI that is already running (an engine's, a Python World's) makes no
// progress board by itself; start_progress_board makes it, collectively, and a second call
// returns the first one's answer without communicating (a rank calling it alone would hang
// otherwise). Destroying the session frees the window, collectively, at the same point here.
TEST(MpiSessionAttached, StartsItsProgressBoardWhenAsked) {
  auto session = std::make_unique<MpiSession>();
  EXPECT_EQ(session->watchdog().board(), nullptr);
  EXPECT_TRUE(session->start_progress_board());
  EXPECT_NE(session->watchdog().board(), nullptr);
  if (testing::world().rank() == 0) EXPECT_TRUE(session->start_progress_board());
  std::unique_ptr<Communicator> w = session->world();
  EXPECT_EQ(w->size(), testing::world().size());
  w->barrier();
  w.reset();
  session.reset();
}

}  // namespace tpl
