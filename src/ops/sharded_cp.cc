// ShardedCPRowParallelOp and ShardedCPColumnParallelOp (§6.10, §6.11), DSA context parallelism:
// a group of size 1, so the layer holds the full weight and runs one GEMM on the rank's own
// context-parallel token shard. Shard(tokens) -> Shard(tokens); no communication. The row op
// adds the bias on every rank (no reduction follows) and ignores input_is_parallel and
// reduce_results. return_bias follows the common convention (the seed's quirk, §16 item 2, is
// not reproduced).
#include "ops/op_util.h"
#include "ops/ops.h"

namespace tpl::ops {
namespace {

class ShardedCpOp final : public LinearOp {
 public:
  ShardedCpOp(const LayerName& n, const LinearFlags& f, OpKind kind, int world_rank)
      : LinearOp(n, f, world_rank), kind_(kind) {}
  OpKind kind() const override { return kind_; }
  int tp_rank() const override { return 0; }
  int tp_size() const override { return 1; }
  Placement input_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Placement output_placement(const ForwardContext&) const override {
    return Placement::shard_tokens();
  }
  Tensor forward(TensorView x, const ForwardContext&, const LocalGemm& g) override {
    return g.run(x, kColumnBias);
  }

 private:
  OpKind kind_;
};

}  // namespace

OpPtr make_sharded_cp_row(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  LinearFlags fixed = f;
  fixed.reduce_results = false;
  fixed.input_is_parallel = true;
  return std::make_unique<ShardedCpOp>(n, fixed, OpKind::kShardedCpRow, env.groups.world_rank());
}

OpPtr make_sharded_cp_column(const LayerName& n, const LinearFlags& f, const OpEnv& env) {
  LinearFlags fixed = f;
  fixed.gather_output = false;
  return std::make_unique<ShardedCpOp>(n, fixed, OpKind::kShardedCpColumn, env.groups.world_rank());
}

}  // namespace tpl::ops
