// Factories of the op classes, one class per file in this folder.
#pragma once

#include <memory>

#include "tpl/linear_op.h"

namespace tpl::ops {

using OpPtr = std::unique_ptr<LinearOp>;
// `unsharded`: the layer runs on a size-1 group (the seed's (None, 0, 1)).
OpPtr make_standard_column(const LayerName& n, const LinearFlags& f, const OpEnv& env,
                           bool unsharded);
OpPtr make_standard_row(const LayerName& n, const LinearFlags& f, const OpEnv& env, bool unsharded);
OpPtr make_replicated(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_mlp_column(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_mlp_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_oproj_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_flashcomm2_oproj_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_matmul_allreduce_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_sequence_column(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_flashcomm2_oshard_qkv(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_sequence_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_sharded_cp_row(const LayerName& n, const LinearFlags& f, const OpEnv& env);
OpPtr make_sharded_cp_column(const LayerName& n, const LinearFlags& f, const OpEnv& env);

}  // namespace tpl::ops
