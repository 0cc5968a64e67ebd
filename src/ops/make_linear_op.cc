#include "ops/ops.h"

namespace tpl {

std::unique_ptr<LinearOp> make_linear_op(const OpChoice& choice, const LayerName& name,
                                         const LinearFlags& flags, const OpEnv& env) {
  switch (choice.kind) {
    case OpKind::kStandardColumn:
      return ops::make_standard_column(name, flags, env, choice.unsharded);
    case OpKind::kStandardRow:
      return ops::make_standard_row(name, flags, env, choice.unsharded);
    case OpKind::kReplicated:
      return ops::make_replicated(name, flags, env);
    case OpKind::kMlpColumn:
      return ops::make_mlp_column(name, flags, env);
    case OpKind::kMlpRow:
      return ops::make_mlp_row(name, flags, env);
    case OpKind::kOProjRow:
      return ops::make_oproj_row(name, flags, env);
    case OpKind::kFlashcomm2OProjRow:
      return ops::make_flashcomm2_oproj_row(name, flags, env);
    case OpKind::kMatmulAllreduceRow:
      return ops::make_matmul_allreduce_row(name, flags, env);
    case OpKind::kSequenceColumn:
      return ops::make_sequence_column(name, flags, env);
    case OpKind::kFlashcomm2OshardQkv:
      return ops::make_flashcomm2_oshard_qkv(name, flags, env);
    case OpKind::kSequenceRow:
      return ops::make_sequence_row(name, flags, env);
    case OpKind::kShardedCpRow:
      return ops::make_sharded_cp_row(name, flags, env);
    case OpKind::kShardedCpColumn:
      return ops::make_sharded_cp_column(name, flags, env);
  }
  return nullptr;
}

}  // namespace tpl
