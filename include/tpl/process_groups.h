// Process groups of the seed (seed-spec §2): which world ranks talk to which for each op.
//
// World ranks are laid out as a [PP, DP, TP] grid, TP fastest: rank = (p*DP + d)*TP + t.
// Group tables are pure functions of the layout (easy to test against the spec's worked
// examples); ProcessGroups then creates one Communicator per group this rank belongs to.
//
//   TP group          the TP consecutive ranks of one (p, d).
//   module group (m)  MLP-TP and O-proj-TP: ranks (p, d, t) for d in one block of m DP indices;
//                     links DP replicas with the same TP index; rank in group = d mod m.
//   FC2 ODP / OTP     FlashComm2 with O-proj TP size P, G = TP / P. TP rank t = j*G + i is member
//                     i of ODP group j (contiguous block of G) and member j of OTP group i
//                     (stride G). With P = 1 the ODP group is the TP group and there is no OTP.
//   shard-weight      layer-sharded o_proj weights (§2.4 / §7b).
#pragma once

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tpl/communicator.h"

namespace tpl {

struct ParallelLayout {
  int pp = 1;
  int dp = 1;
  int tp = 1;
  int world_size() const { return pp * dp * tp; }
  // Throws ConfigError when a size is < 1 or pp*dp*tp != world_size.
  void validate(int world_size) const;
  bool operator==(const ParallelLayout&) const = default;
};

struct RankCoord {
  int p = 0, d = 0, t = 0;
};
RankCoord coord_of(const ParallelLayout& layout, int world_rank);
int rank_of(const ParallelLayout& layout, RankCoord c);

using GroupTable = std::vector<std::vector<int>>;  // each group: world ranks in member order

GroupTable tp_groups(const ParallelLayout& layout);
// Module TP groups of size m (MLP-TP, O-proj-TP). Throws ConfigError unless m >= 1 and m | DP.
GroupTable module_tp_groups(const ParallelLayout& layout, int m);
// FlashComm2 groups. Throws ConfigError unless 1 <= P < TP and P | TP ("P must divide T and be
// smaller than it"). With P = 1, odp == tp_groups and otp is empty.
struct FlashComm2Groups {
  GroupTable odp;
  GroupTable otp;
};
FlashComm2Groups flashcomm2_groups(const ParallelLayout& layout, int p);
// The reorganised batch table of §7.1: G rows of P entries, row i = [i, i+G, ..., i+(P-1)G].
std::vector<std::vector<int>> flashcomm2_batch_table(int tp, int p);

enum class ShardWeightScheme {
  kWholeStage,   // FC2 with P = 1, or DSA-CP with layer shard: every rank of a pipeline stage
  kSameOtpRank,  // FC2 with P > 1: ranks of a stage with the same FC2-OTP rank j
  kSameTpIndex,  // otherwise: ranks of a stage with the same TP index
};
GroupTable shard_weight_groups(const ParallelLayout& layout, ShardWeightScheme scheme, int fc2_p);

// Index of the group in `table` that contains `world_rank`, and the member index; nullopt if
// the rank is in none.
struct Membership {
  int group = -1;
  int member = -1;
};
std::optional<Membership> find_membership(const GroupTable& table, int world_rank);
std::string format_groups(const GroupTable& table);  // "[0,2] [1,3]"

// Communicators for one rank. Construction is collective over `world`: every rank must build
// ProcessGroups with the same arguments, in the same order as its other splits.
struct GroupSizes {
  int mlp_tp = 0;                                 // 0 = no MLP-TP group
  int oproj_tp = 0;                               // 0 = no O-proj-TP group
  int flashcomm2_p = 0;                           // 0 = FlashComm2 off
  std::optional<ShardWeightScheme> shard_weight;  // nullopt = no shard-weight group
  bool operator==(const GroupSizes&) const = default;
};

// The groups by role, as plans and reports name them.
inline constexpr std::array<const char*, 6> kGroupRoles = {"tp",      "mlp_tp",  "oproj_tp",
                                                           "fc2_odp", "fc2_otp", "shard_weight"};
// Which communicator serves each group, by role (a plan's per-group choice, tpl/plan.h). A role
// not named is split from the world as it is, so its kind is the world's (TPL_COMM). With
// FlashComm2's P = 1 the ODP group is the TP group, and "tp" decides.
using GroupComms = std::map<std::string, CommKind>;
// Whether `role` is one of kGroupRoles.
bool is_group_role(const std::string& role);
// ConfigError naming `source` for a role not in kGroupRoles.
void validate_group_comms(const GroupComms& comms, const std::string& source);

class ProcessGroups {
 public:
  // `comms`: Communicator::split_as for the roles it names. Unsupported (every rank alike) when
  // the world cannot make a named kind (a local or NCCL world).
  ProcessGroups(Communicator& world, const ParallelLayout& layout, const GroupSizes& sizes,
                const GroupComms& comms = {});

  const ParallelLayout& layout() const { return layout_; }
  int world_rank() const { return world_rank_; }
  Communicator& tp() const { return *tp_; }
  // Throws ConfigError naming the missing feature when a group was not created.
  Communicator& mlp_tp() const;
  Communicator& oproj_tp() const;
  Communicator& flashcomm2_odp() const;
  // nullptr when FlashComm2 is off or P = 1 (no OTP group).
  Communicator* flashcomm2_otp() const { return fc2_otp_.get(); }
  Communicator& shard_weight() const;
  int flashcomm2_p() const { return sizes_.flashcomm2_p; }
  // Sum of CommStats::bytes_sent over this rank's communicators.
  double bytes_sent() const;
  // (role, communicator) for each group this rank belongs to, in kGroupRoles order; FlashComm2's
  // ODP group only when it is not the TP group.
  std::vector<std::pair<std::string, const Communicator*>> communicators() const;

 private:
  ParallelLayout layout_;
  GroupSizes sizes_;
  int world_rank_ = 0;
  std::unique_ptr<Communicator> tp_, mlp_tp_, oproj_tp_, fc2_otp_, shard_weight_;
  std::unique_ptr<Communicator> fc2_odp_owned_;  // null when ODP is the TP group (P = 1)
  Communicator* fc2_odp_ = nullptr;
};

}  // namespace tpl
