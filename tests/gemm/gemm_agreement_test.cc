// Cross-rank agreement on measured GEMM choices (tpl/cpu_gemm.h), at 1-3 ranks: whatever each
// rank would choose on its own, every rank plans rank 0's implementation, and a run of makes
// stays in lockstep (no hang) even where the ranks' layer shapes differ.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "harness.h"
#include "tpl/cpu_gemm.h"
#include "tpl/cpu_isa.h"
#include "tpl/error.h"

namespace tpl {
namespace {

using testing::all_gather_strings;
using testing::expect_agreed;
using testing::world;

const GemmDesc kF32{96, 40, DType::kF32, DType::kF32, DType::kF32};

TEST(GemmAgreement, EveryRankTakesTheRootsName) {
  Communicator& comm = world();
  const GemmAgreement agree = gemm_agreement_from_root(comm);
  const std::string mine = "choice_of_rank_" + std::to_string(comm.rank());
  std::string failure;
  if (const std::string got = agree(kF32, mine); got != "choice_of_rank_0")
    failure = "agreed on '" + got + "', expected 'choice_of_rank_0'";
  // A name too long to send arrives cut, so it names no implementation (make() keeps its own).
  const std::string got = agree(kF32, std::string(100, 'x'));
  if (got != std::string(63, 'x')) failure += " long name arrived as '" + got + "'";
  expect_agreed(comm, failure);
  EXPECT_THROW(gemm_agreement_from_root(comm, comm.size()), InvalidArgument);
}

// Each rank forces a different implementation (as a rank with other timings would choose); with
// the agreement every rank plans rank 0's, and each rank's shard shape may differ.
TEST(GemmAgreement, RanksThatChooseDifferentlyPlanTheSameImplementation) {
  Communicator& comm = world();
  const CpuInfo cpu = detect_cpu();
  CpuGemmOptions probe;
  probe.measure = false;
  std::vector<std::string> serving;
  for (const GemmCandidate& c : CpuGemmChooser(cpu, probe).candidates(kF32))
    if (c.why_not.empty()) serving.push_back(c.name);
  ASSERT_GE(serving.size(), 2u);
  CpuGemmOptions o = probe;
  o.force = {serving[static_cast<std::size_t>(comm.rank()) % serving.size()]};
  CpuGemmChooser chooser(cpu, o);
  chooser.set_agreement(gemm_agreement_from_root(comm));
  std::string failure;
  for (int layer = 0; layer < 3; ++layer) {
    GemmDesc d = kF32;
    d.n += comm.rank() * layer;  // uneven shards: other shapes per rank, same number of makes
    Tensor w = testing::random_ints(d.n, d.k, 8, 11 + layer, DType::kF32);
    std::string chosen;
    const std::string name = chooser.make(d, w, TensorView(), &chosen)->name();
    const std::vector<std::string> all = all_gather_strings(comm, chosen);
    if (chosen != serving.front())
      failure += " layer " + std::to_string(layer) + ": planned " + chosen + " (" + name +
                 "), rank 0 forced " + serving.front() + ";";
    for (std::size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0]) failure += " rank " + std::to_string(r) + " differs: " + all[r] + ";";
  }
  expect_agreed(comm, failure);
}

}  // namespace
}  // namespace tpl
