#include "tpl/process_groups.h"

#include <algorithm>
#include <sstream>

#include "tpl/error.h"

namespace tpl {

namespace {
const Where kWhere{"process groups"};
}

void ParallelLayout::validate(int world) const {
  if (pp < 1 || dp < 1 || tp < 1)
    TPL_THROW(ConfigError, kWhere, "PP, DP and TP must be >= 1, got PP=", pp, " DP=", dp,
              " TP=", tp);
  int product = 0;
  if (__builtin_mul_overflow(pp, dp, &product) || __builtin_mul_overflow(product, tp, &product))
    TPL_THROW(ConfigError, kWhere, "PP x DP x TP = ", pp, " x ", dp, " x ", tp,
              " does not fit in an int");
  if (product != world)
    TPL_THROW(ConfigError, kWhere, "PP x DP x TP = ", pp, " x ", dp, " x ", tp, " = ", product,
              " does not match the world size ", world);
}

RankCoord coord_of(const ParallelLayout& l, int r) {
  TPL_CHECK(r >= 0 && r < l.world_size(), kWhere, "rank ", r, " outside world of ", l.world_size());
  return {r / (l.dp * l.tp), (r / l.tp) % l.dp, r % l.tp};
}

int rank_of(const ParallelLayout& l, RankCoord c) {
  return (c.p * l.dp + c.d) * l.tp + c.t;
}

GroupTable tp_groups(const ParallelLayout& l) {
  GroupTable g;
  for (int b = 0; b < l.pp * l.dp; ++b) {
    std::vector<int> grp;
    for (int t = 0; t < l.tp; ++t) grp.push_back(b * l.tp + t);
    g.push_back(grp);
  }
  return g;
}

GroupTable module_tp_groups(const ParallelLayout& l, int m) {
  if (m < 1 || l.dp % m != 0)
    TPL_THROW(ConfigError, kWhere, "module TP size m = ", m,
              " is invalid: m must divide the DP size ", l.dp);
  GroupTable g;
  for (int p = 0; p < l.pp; ++p)
    for (int c = 0; c < l.dp / m; ++c)
      for (int t = 0; t < l.tp; ++t) {
        std::vector<int> grp;
        for (int d = c * m; d < (c + 1) * m; ++d) grp.push_back(rank_of(l, {p, d, t}));
        g.push_back(grp);
      }
  return g;
}

FlashComm2Groups flashcomm2_groups(const ParallelLayout& l, int p) {
  if (p < 1 || p >= l.tp || l.tp % p != 0)
    TPL_THROW(ConfigError, kWhere, "FlashComm2 O-proj TP size P = ", p,
              " is invalid for TP = ", l.tp, ": P must divide T and be smaller than it");
  FlashComm2Groups out;
  if (p == 1) {
    out.odp = tp_groups(l);
    return out;
  }
  const int g = l.tp / p;
  for (int b = 0; b < l.pp * l.dp; ++b) {
    const int base = b * l.tp;
    for (int i = 0; i < g; ++i) {
      std::vector<int> otp;
      for (int j = 0; j < p; ++j) otp.push_back(base + i + j * g);
      out.otp.push_back(otp);
    }
    for (int j = 0; j < p; ++j) {
      std::vector<int> odp;
      for (int i = 0; i < g; ++i) odp.push_back(base + j * g + i);
      out.odp.push_back(odp);
    }
  }
  return out;
}

std::vector<std::vector<int>> flashcomm2_batch_table(int tp, int p) {
  if (p < 1 || tp % p != 0)
    TPL_THROW(ConfigError, kWhere, "batch table needs P | T, got T=", tp, " P=", p);
  const int g = tp / p;
  std::vector<std::vector<int>> t(g);
  for (int i = 0; i < g; ++i)
    for (int q = 0; q < p; ++q) t[i].push_back(i + q * g);
  return t;
}

GroupTable shard_weight_groups(const ParallelLayout& l, ShardWeightScheme scheme, int fc2_p) {
  GroupTable out;
  for (int p = 0; p < l.pp; ++p) {
    switch (scheme) {
      case ShardWeightScheme::kWholeStage: {
        std::vector<int> grp;
        for (int d = 0; d < l.dp; ++d)
          for (int t = 0; t < l.tp; ++t) grp.push_back(rank_of(l, {p, d, t}));
        out.push_back(grp);
        break;
      }
      case ShardWeightScheme::kSameOtpRank: {
        if (fc2_p < 2 || l.tp % fc2_p != 0)
          TPL_THROW(ConfigError, kWhere, "shard-weight groups by OTP rank need P > 1 dividing T");
        const int g = l.tp / fc2_p;
        for (int j = 0; j < fc2_p; ++j) {
          std::vector<int> grp;
          for (int d = 0; d < l.dp; ++d)
            for (int i = 0; i < g; ++i) grp.push_back(rank_of(l, {p, d, j * g + i}));
          out.push_back(grp);
        }
        break;
      }
      case ShardWeightScheme::kSameTpIndex:
        for (int t = 0; t < l.tp; ++t) {
          std::vector<int> grp;
          for (int d = 0; d < l.dp; ++d) grp.push_back(rank_of(l, {p, d, t}));
          out.push_back(grp);
        }
        break;
    }
  }
  return out;
}

std::optional<Membership> find_membership(const GroupTable& table, int world_rank) {
  for (std::size_t g = 0; g < table.size(); ++g) {
    auto it = std::find(table[g].begin(), table[g].end(), world_rank);
    if (it != table[g].end())
      return Membership{static_cast<int>(g), static_cast<int>(it - table[g].begin())};
  }
  return std::nullopt;
}

std::string format_groups(const GroupTable& table) {
  std::ostringstream os;
  for (std::size_t g = 0; g < table.size(); ++g) {
    os << (g ? " [" : "[");
    for (std::size_t i = 0; i < table[g].size(); ++i) os << (i ? "," : "") << table[g][i];
    os << "]";
  }
  return os.str();
}

namespace {
// Collective: every world rank calls this for the same table. Each rank's color is its group
// index and its key its member index, so member order follows the table.
std::unique_ptr<Communicator> split_by(Communicator& world, const GroupTable& table,
                                       const GroupComms& comms, const char* role) {
  auto m = find_membership(table, world.rank());
  const auto kind = comms.find(role);
  auto comm = kind == comms.end()
                  ? world.split(m ? m->group : -1, m ? m->member : 0)
                  : world.split_as(m ? m->group : -1, m ? m->member : 0, kind->second);
  if (m) {
    TPL_CHECK_EQ(comm->rank(), m->member, (Where{"process groups", world.rank()}));
    TPL_CHECK_EQ(comm->size(), static_cast<int>(table[m->group].size()),
                 (Where{"process groups", world.rank()}));
  }
  return comm;
}
}  // namespace

bool is_group_role(const std::string& role) {
  return std::any_of(kGroupRoles.begin(), kGroupRoles.end(),
                     [&](const char* r) { return role == r; });
}

void validate_group_comms(const GroupComms& comms, const std::string& source) {
  for (const auto& [role, kind] : comms)
    if (!is_group_role(role))
      TPL_THROW(ConfigError, Where{source}, "no process group is called '", role,
                "'; the groups are tp, mlp_tp, oproj_tp, fc2_odp, fc2_otp and shard_weight");
}

ProcessGroups::ProcessGroups(Communicator& world, const ParallelLayout& layout,
                             const GroupSizes& sizes, const GroupComms& comms)
    : layout_(layout), sizes_(sizes), world_rank_(world.rank()) {
  layout_.validate(world.size());
  validate_group_comms(comms, "process groups");
  // Validate everything before the first split so that a bad config fails identically on every
  // rank without leaving some ranks inside a collective.
  if (sizes.mlp_tp > 0) module_tp_groups(layout, sizes.mlp_tp);
  if (sizes.oproj_tp > 0) module_tp_groups(layout, sizes.oproj_tp);
  FlashComm2Groups fc2;
  if (sizes.flashcomm2_p > 0) fc2 = flashcomm2_groups(layout, sizes.flashcomm2_p);
  GroupTable sw;
  if (sizes.shard_weight) sw = shard_weight_groups(layout, *sizes.shard_weight, sizes.flashcomm2_p);

  tp_ = split_by(world, tp_groups(layout), comms, "tp");
  if (sizes.mlp_tp > 0)
    mlp_tp_ = split_by(world, module_tp_groups(layout, sizes.mlp_tp), comms, "mlp_tp");
  if (sizes.oproj_tp > 0)
    oproj_tp_ = split_by(world, module_tp_groups(layout, sizes.oproj_tp), comms, "oproj_tp");
  if (sizes.flashcomm2_p == 1) {
    fc2_odp_ = tp_.get();
  } else if (sizes.flashcomm2_p > 1) {
    fc2_odp_owned_ = split_by(world, fc2.odp, comms, "fc2_odp");
    fc2_otp_ = split_by(world, fc2.otp, comms, "fc2_otp");
    fc2_odp_ = fc2_odp_owned_.get();
  }
  if (sizes.shard_weight) shard_weight_ = split_by(world, sw, comms, "shard_weight");
}

std::vector<std::pair<std::string, const Communicator*>> ProcessGroups::communicators() const {
  std::vector<std::pair<std::string, const Communicator*>> v;
  const Communicator* by_role[] = {tp_.get(),       mlp_tp_.get(),
                                   oproj_tp_.get(), fc2_odp_owned_.get(),
                                   fc2_otp_.get(),  shard_weight_.get()};
  for (std::size_t i = 0; i < kGroupRoles.size(); ++i)
    if (by_role[i]) v.emplace_back(kGroupRoles[i], by_role[i]);
  return v;
}

double ProcessGroups::bytes_sent() const {
  double b = 0;
  for (const Communicator* c : {tp_.get(), mlp_tp_.get(), oproj_tp_.get(), fc2_otp_.get(),
                                shard_weight_.get(), fc2_odp_owned_.get()})
    if (c) b += c->stats().bytes_sent;
  return b;
}

Communicator& ProcessGroups::mlp_tp() const {
  if (!mlp_tp_) TPL_THROW(ConfigError, kWhere, "MLP-TP group requested but MLP TP is disabled");
  return *mlp_tp_;
}
Communicator& ProcessGroups::oproj_tp() const {
  if (!oproj_tp_)
    TPL_THROW(ConfigError, kWhere, "O-proj-TP group requested but O-proj TP is disabled");
  return *oproj_tp_;
}
Communicator& ProcessGroups::flashcomm2_odp() const {
  if (!fc2_odp_)
    TPL_THROW(ConfigError, kWhere, "FlashComm2 ODP group requested but FlashComm2 is disabled");
  return *fc2_odp_;
}
Communicator& ProcessGroups::shard_weight() const {
  if (!shard_weight_)
    TPL_THROW(ConfigError, kWhere,
              "shard-weight group requested but layer sharding is not configured");
  return *shard_weight_;
}

}  // namespace tpl
