// Group tables of seed-spec §2 (module TP, FlashComm2 ODP/OTP, shard-weight) and the FC2 batch
// table of §7.1, checked against the spec's worked examples.
#include <gtest/gtest.h>

#include "expect_throw.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "tpl/communicator.h"
#include "tpl/error.h"
#include "tpl/process_groups.h"

namespace tpl {
namespace {

using Groups = std::vector<std::vector<int>>;

using tpl::testing::expect_throw_with;

std::set<std::vector<int>> as_set(const Groups& g) {
  return {g.begin(), g.end()};
}

ParallelLayout layout(int pp, int dp, int tp) {
  ParallelLayout l;
  l.pp = pp;
  l.dp = dp;
  l.tp = tp;
  return l;
}

// Every rank of the world appears in exactly one group of the table.
void expect_partition(const Groups& g, int world) {
  std::vector<int> seen(world, 0);
  for (const auto& grp : g)
    for (int r : grp) {
      ASSERT_GE(r, 0);
      ASSERT_LT(r, world);
      ++seen[r];
    }
  for (int r = 0; r < world; ++r) EXPECT_EQ(seen[r], 1) << "rank " << r;
}

// ---- layout and coordinates -------------------------------------------------------------

TEST(ParallelLayoutTest, CoordRoundTrip) {
  const ParallelLayout l = layout(2, 3, 4);
  ASSERT_EQ(l.world_size(), 24);
  for (int r = 0; r < l.world_size(); ++r) {
    const RankCoord c = coord_of(l, r);
    EXPECT_EQ(c.p, r / 12);
    EXPECT_EQ(c.d, (r / 4) % 3);
    EXPECT_EQ(c.t, r % 4);
    EXPECT_EQ(rank_of(l, c), r);
  }
  for (int p = 0; p < 2; ++p)
    for (int d = 0; d < 3; ++d)
      for (int t = 0; t < 4; ++t) {
        const int r = rank_of(l, {p, d, t});
        EXPECT_EQ(r, (p * 3 + d) * 4 + t);
        const RankCoord c = coord_of(l, r);
        EXPECT_EQ(c.p, p);
        EXPECT_EQ(c.d, d);
        EXPECT_EQ(c.t, t);
      }
}

TEST(ParallelLayoutTest, CoordOfOutOfRangeThrows) {
  const ParallelLayout l = layout(1, 2, 2);
  EXPECT_THROW(coord_of(l, -1), InvalidArgument);
  EXPECT_THROW(coord_of(l, 4), InvalidArgument);
}

TEST(ParallelLayoutTest, ValidateWorldSize) {
  EXPECT_NO_THROW(layout(1, 2, 4).validate(8));
  expect_throw_with<ConfigError>([] { layout(1, 2, 4).validate(6); },
                                 "does not match the world size");
  expect_throw_with<ConfigError>([] { layout(1, 0, 4).validate(0); }, "must be >= 1");
  expect_throw_with<ConfigError>([] { layout(1, 2, -1).validate(-2); }, "must be >= 1");
}

TEST(ProcessGroupsTest, TpGroupsAreConsecutiveBlocks) {
  EXPECT_EQ(tp_groups(layout(1, 2, 4)), (Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}));
  EXPECT_EQ(tp_groups(layout(2, 1, 2)), (Groups{{0, 1}, {2, 3}}));
  EXPECT_EQ(tp_groups(layout(1, 3, 1)), (Groups{{0}, {1}, {2}}));
}

// ---- §2.2 module TP groups --------------------------------------------------------------

TEST(ModuleTpGroupsTest, Dp4Tp1M2) {
  EXPECT_EQ(module_tp_groups(layout(1, 4, 1), 2), (Groups{{0, 1}, {2, 3}}));
}

TEST(ModuleTpGroupsTest, Dp16Tp1M8) {
  EXPECT_EQ(module_tp_groups(layout(1, 16, 1), 8),
            (Groups{{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}}));
}

TEST(ModuleTpGroupsTest, Dp4Tp2M2OrderedByChunkThenT) {
  const Groups g = module_tp_groups(layout(1, 4, 2), 2);
  // §2.2: t=0: [0,2] [4,6]; t=1: [1,3] [5,7]. The table is ordered by (p, chunk, t).
  EXPECT_EQ(as_set(g), as_set(Groups{{0, 2}, {4, 6}, {1, 3}, {5, 7}}));
  EXPECT_EQ(g, (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
}

TEST(ModuleTpGroupsTest, RankInGroupIsDModM) {
  const ParallelLayout l = layout(2, 4, 2);
  const Groups g = module_tp_groups(l, 2);
  expect_partition(g, l.world_size());
  for (int r = 0; r < l.world_size(); ++r) {
    const auto m = find_membership(g, r);
    ASSERT_TRUE(m.has_value());
    const RankCoord c = coord_of(l, r);
    EXPECT_EQ(m->member, c.d % 2);
    // Every member shares p and t.
    for (int peer : g[m->group]) {
      EXPECT_EQ(coord_of(l, peer).p, c.p);
      EXPECT_EQ(coord_of(l, peer).t, c.t);
    }
  }
}

TEST(ModuleTpGroupsTest, SizeEqualToDpAndOne) {
  EXPECT_EQ(module_tp_groups(layout(1, 4, 1), 4), (Groups{{0, 1, 2, 3}}));
  EXPECT_EQ(module_tp_groups(layout(1, 2, 1), 1), (Groups{{0}, {1}}));
}

TEST(ModuleTpGroupsTest, MustDivideDp) {
  expect_throw_with<ConfigError>([] { module_tp_groups(layout(1, 4, 1), 3); },
                                 "must divide the DP size");
  expect_throw_with<ConfigError>([] { module_tp_groups(layout(1, 4, 1), 8); },
                                 "must divide the DP size");
  expect_throw_with<ConfigError>([] { module_tp_groups(layout(1, 4, 1), 0); },
                                 "must divide the DP size");
}

// ---- §2.3 FlashComm2 groups ---------------------------------------------------------------

TEST(FlashComm2GroupsTest, P1HasNoOtpAndOdpIsTp) {
  const ParallelLayout l = layout(1, 1, 4);
  const FlashComm2Groups g = flashcomm2_groups(l, 1);
  EXPECT_TRUE(g.otp.empty());
  EXPECT_EQ(g.odp, tp_groups(l));
  EXPECT_EQ(g.odp, (Groups{{0, 1, 2, 3}}));
}

struct Fc2Case {
  int tp, p;
  Groups otp, odp;
};

TEST(FlashComm2GroupsTest, SpecTable) {
  const std::vector<Fc2Case> cases = {
      {4, 2, {{0, 2}, {1, 3}}, {{0, 1}, {2, 3}}},
      {8, 2, {{0, 4}, {1, 5}, {2, 6}, {3, 7}}, {{0, 1, 2, 3}, {4, 5, 6, 7}}},
      {8, 4, {{0, 2, 4, 6}, {1, 3, 5, 7}}, {{0, 1}, {2, 3}, {4, 5}, {6, 7}}},
      {16,
       2,
       {{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}},
       {{0, 1, 2, 3, 4, 5, 6, 7}, {8, 9, 10, 11, 12, 13, 14, 15}}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("T=" + std::to_string(c.tp) + " P=" + std::to_string(c.p));
    const FlashComm2Groups g = flashcomm2_groups(layout(1, 1, c.tp), c.p);
    EXPECT_EQ(g.otp, c.otp) << format_groups(g.otp);
    EXPECT_EQ(g.odp, c.odp) << format_groups(g.odp);
  }
}

TEST(FlashComm2GroupsTest, SecondDpReplica) {
  const FlashComm2Groups g = flashcomm2_groups(layout(1, 2, 4), 2);
  EXPECT_EQ(g.otp, (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(g.odp, (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
}

TEST(FlashComm2GroupsTest, CoordinatesJI) {
  // TP rank t = j*G + i is member i of ODP group j and member j of OTP group i.
  for (auto [tp, p] : std::vector<std::pair<int, int>>{{4, 2}, {8, 2}, {8, 4}, {16, 2}, {16, 8}}) {
    const ParallelLayout l = layout(1, 2, tp);
    const FlashComm2Groups g = flashcomm2_groups(l, p);
    expect_partition(g.otp, l.world_size());
    expect_partition(g.odp, l.world_size());
    const int gsz = tp / p;
    for (int r = 0; r < l.world_size(); ++r) {
      const int t = r % tp, j = t / gsz, i = t % gsz;
      const auto odp = find_membership(g.odp, r);
      const auto otp = find_membership(g.otp, r);
      ASSERT_TRUE(odp && otp);
      EXPECT_EQ(odp->member, i) << "rank " << r;
      EXPECT_EQ(otp->member, j) << "rank " << r;
      EXPECT_EQ(static_cast<int>(g.odp[odp->group].size()), gsz);
      EXPECT_EQ(static_cast<int>(g.otp[otp->group].size()), p);
    }
  }
}

TEST(FlashComm2GroupsTest, InvalidP) {
  const std::string msg = "P must divide T and be smaller than it";
  expect_throw_with<ConfigError>([] { flashcomm2_groups(layout(1, 1, 4), 4); }, msg);  // P = T
  expect_throw_with<ConfigError>([] { flashcomm2_groups(layout(1, 1, 4), 3); }, msg);  // P !| T
  expect_throw_with<ConfigError>([] { flashcomm2_groups(layout(1, 1, 4), 0); }, msg);  // P = 0
  expect_throw_with<ConfigError>([] { flashcomm2_groups(layout(1, 1, 4), 8); }, msg);  // P > T
  expect_throw_with<ConfigError>([] { flashcomm2_groups(layout(1, 1, 1), 1); }, msg);  // T = 1
}

// ---- §7.1 batch table --------------------------------------------------------------------

TEST(BatchTableTest, SpecTable) {
  EXPECT_EQ(flashcomm2_batch_table(4, 1), (Groups{{0}, {1}, {2}, {3}}));
  EXPECT_EQ(flashcomm2_batch_table(4, 2), (Groups{{0, 2}, {1, 3}}));
  EXPECT_EQ(flashcomm2_batch_table(8, 2), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  EXPECT_EQ(flashcomm2_batch_table(8, 4), (Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
  EXPECT_EQ(flashcomm2_batch_table(16, 2),
            (Groups{{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}}));
}

TEST(BatchTableTest, EqualsOtpMembershipInvariant) {
  // §15 item 6: row i of the table == the local TP ranks of FC2 OTP group i.
  for (int tp : {2, 4, 6, 8, 12, 16}) {
    for (int p = 2; p < tp; ++p) {
      if (tp % p) continue;
      SCOPED_TRACE("T=" + std::to_string(tp) + " P=" + std::to_string(p));
      const ParallelLayout l = layout(1, 3, tp);
      const auto table = flashcomm2_batch_table(tp, p);
      const FlashComm2Groups g = flashcomm2_groups(l, p);
      const int gsz = tp / p;
      ASSERT_EQ(static_cast<int>(table.size()), gsz);
      for (int d = 0; d < 3; ++d)
        for (int i = 0; i < gsz; ++i) {
          std::vector<int> local;
          for (int r : g.otp[d * gsz + i]) local.push_back(r - d * tp);
          EXPECT_EQ(table[i], local);
        }
    }
  }
}

TEST(BatchTableTest, InvalidP) {
  EXPECT_THROW(flashcomm2_batch_table(4, 3), ConfigError);
  EXPECT_THROW(flashcomm2_batch_table(4, 0), ConfigError);
}

// ---- §2.4 shard-weight groups --------------------------------------------------------------

TEST(ShardWeightGroupsTest, WholeStage) {
  EXPECT_EQ(shard_weight_groups(layout(1, 2, 2), ShardWeightScheme::kWholeStage, 1),
            (Groups{{0, 1, 2, 3}}));
  EXPECT_EQ(shard_weight_groups(layout(2, 1, 2), ShardWeightScheme::kWholeStage, 0),
            (Groups{{0, 1}, {2, 3}}));
}

TEST(ShardWeightGroupsTest, SameOtpRank) {
  // T=4, P=2, DP=2: FC2-OTP rank j = t div 2; group = all ranks of the stage with that j.
  const ParallelLayout l = layout(1, 2, 4);
  const Groups g = shard_weight_groups(l, ShardWeightScheme::kSameOtpRank, 2);
  EXPECT_EQ(g, (Groups{{0, 1, 4, 5}, {2, 3, 6, 7}}));
  for (const auto& grp : g) EXPECT_EQ(static_cast<int>(grp.size()), l.world_size() / (1 * 2));
  // Members of one group all hold the same o_proj input slice j.
  const Groups g8 = shard_weight_groups(layout(1, 1, 8), ShardWeightScheme::kSameOtpRank, 4);
  EXPECT_EQ(g8, (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_THROW(shard_weight_groups(l, ShardWeightScheme::kSameOtpRank, 1), ConfigError);
  EXPECT_THROW(shard_weight_groups(l, ShardWeightScheme::kSameOtpRank, 3), ConfigError);
}

TEST(ShardWeightGroupsTest, SameTpIndex) {
  EXPECT_EQ(shard_weight_groups(layout(1, 3, 2), ShardWeightScheme::kSameTpIndex, 0),
            (Groups{{0, 2, 4}, {1, 3, 5}}));
  EXPECT_EQ(shard_weight_groups(layout(2, 2, 2), ShardWeightScheme::kSameTpIndex, 0),
            (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
}

TEST(ShardWeightGroupsTest, GroupsStayInsideOneStage) {
  const ParallelLayout l = layout(2, 2, 4);
  for (auto [scheme, p] :
       std::vector<std::pair<ShardWeightScheme, int>>{{ShardWeightScheme::kWholeStage, 1},
                                                      {ShardWeightScheme::kSameOtpRank, 2},
                                                      {ShardWeightScheme::kSameTpIndex, 0}}) {
    const Groups g = shard_weight_groups(l, scheme, p);
    expect_partition(g, l.world_size());
    for (const auto& grp : g)
      for (int r : grp) EXPECT_EQ(coord_of(l, r).p, coord_of(l, grp.front()).p);
  }
}

// ---- helpers -----------------------------------------------------------------------------

TEST(FormatGroupsTest, Formats) {
  EXPECT_EQ(format_groups(Groups{{0, 2}, {1, 3}}), "[0,2] [1,3]");
  EXPECT_EQ(format_groups(Groups{{5}}), "[5]");
  EXPECT_EQ(format_groups(Groups{}), "");
  EXPECT_EQ(format_groups(Groups{{0, 1, 2, 3}, {4, 5, 6, 7}}), "[0,1,2,3] [4,5,6,7]");
}

TEST(FindMembershipTest, FindsGroupAndMember) {
  const Groups g{{0, 2}, {1, 3}};
  auto m = find_membership(g, 3);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->group, 1);
  EXPECT_EQ(m->member, 1);
  m = find_membership(g, 2);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->group, 0);
  EXPECT_EQ(m->member, 1);
  EXPECT_FALSE(find_membership(g, 7).has_value());
}

// ---- ProcessGroups on a one-rank world (LocalCommunicator, no MPI) --------------------------

TEST(ProcessGroupsObjectTest, MissingGroupsNameTheFeature) {
  LocalCommunicator world;
  const ProcessGroups pg(world, layout(1, 1, 1), GroupSizes{});
  EXPECT_EQ(pg.world_rank(), 0);
  EXPECT_EQ(pg.tp().size(), 1);
  EXPECT_EQ(pg.flashcomm2_otp(), nullptr);
  EXPECT_EQ(pg.flashcomm2_p(), 0);
  expect_throw_with<ConfigError>([&] { pg.mlp_tp(); }, "MLP TP is disabled");
  expect_throw_with<ConfigError>([&] { pg.oproj_tp(); }, "O-proj TP is disabled");
  expect_throw_with<ConfigError>([&] { pg.flashcomm2_odp(); }, "FlashComm2 is disabled");
  expect_throw_with<ConfigError>([&] { pg.shard_weight(); }, "layer sharding");
}

TEST(ProcessGroupsObjectTest, CreatesRequestedGroups) {
  LocalCommunicator world;
  GroupSizes sizes;
  sizes.mlp_tp = 1;
  sizes.oproj_tp = 1;
  sizes.shard_weight = ShardWeightScheme::kSameTpIndex;
  const ProcessGroups pg(world, layout(1, 1, 1), sizes);
  EXPECT_EQ(pg.mlp_tp().size(), 1);
  EXPECT_EQ(pg.oproj_tp().rank(), 0);
  EXPECT_EQ(pg.shard_weight().size(), 1);
}

// A plan's communicator per group: a role that is no group is a ConfigError; a local world
// cannot make MPI or SHM groups, and says so.
TEST(ProcessGroupsObjectTest, GroupCommunicatorsAreValidated) {
  LocalCommunicator world;
  expect_throw_with<ConfigError>(
      [&] {
        ProcessGroups(world, layout(1, 1, 1), GroupSizes{}, {{"tq", CommKind::kMpi}});
      },
      "no process group is called 'tq'");
  expect_throw_with<Unsupported>(
      [&] {
        ProcessGroups(world, layout(1, 1, 1), GroupSizes{}, {{"tp", CommKind::kShm}});
      },
      "a 'local' communicator cannot make a group served by shm");
  const ProcessGroups pg(world, layout(1, 1, 1), GroupSizes{});
  ASSERT_EQ(pg.communicators().size(), 1u);
  EXPECT_EQ(pg.communicators()[0].first, "tp");
  EXPECT_EQ(world.kind_name(), "local");
  expect_throw_with<ConfigError>([] { parse_comm_kind("nccl", "test"); }, "got 'nccl'");
}

TEST(ProcessGroupsObjectTest, ValidatesBeforeSplitting) {
  LocalCommunicator world;
  expect_throw_with<ConfigError>([&] { ProcessGroups(world, layout(1, 2, 1), GroupSizes{}); },
                                 "does not match the world size");
  GroupSizes fc2;
  fc2.flashcomm2_p = 1;  // P must be < T = 1
  expect_throw_with<ConfigError>([&] { ProcessGroups(world, layout(1, 1, 1), fc2); },
                                 "P must divide T and be smaller than it");
  GroupSizes mlp;
  mlp.mlp_tp = 2;
  expect_throw_with<ConfigError>([&] { ProcessGroups(world, layout(1, 1, 1), mlp); },
                                 "must divide the DP size");
}

}  // namespace
}  // namespace tpl
