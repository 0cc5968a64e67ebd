// Helpers shared by the ops: padding, input splitting, bias rules, gathers of uneven shards.
#pragma once

#include <vector>

#include "tpl/communicator.h"
#include "tpl/linear_op.h"

namespace tpl::ops {

// Whether this rank adds the bias terms (LocalGemm applies skip_bias_add itself).
// Column ops: every rank, since nothing is summed.
constexpr bool kColumnBias = true;
// Row ops: the reducing group's rank 0 only, so a sum counts the bias once.
inline bool row_bias(int group_rank) {
  return group_rank == 0;
}

// [rows + pad, cols]: x followed by `pad` zero rows, on `rt`.
Tensor pad_rows(Runtime& rt, TensorView x, std::int64_t pad);
// A contiguous copy of rows [0, rows) of x (dropping padding), on `rt`.
Tensor first_rows(Runtime& rt, TensorView x, std::int64_t rows);
// Row ops' get_input_parallel: x itself when input_is_parallel, else this rank's block of
// features, split in whole units of `unit` features like the layer's weight (LayerSpec::in_unit).
TensorView input_parallel(TensorView x, const LinearFlags& f, int size, int rank,
                          std::int64_t unit = 1);
// all-gather along tokens: [R, C] -> [size*R, C].
Tensor gather_tokens(Runtime& rt, Communicator& comm, TensorView x);
// all-gather along features of shards that follow shard_range(total_cols, size, .): members
// may hold different widths; the result is [R, total_cols] in member order.
Tensor gather_features(Runtime& rt, Communicator& comm, TensorView x, std::int64_t total_cols);
// Tokens held by each member of a module group (MLP-TP, O-proj-TP) that spans DP replicas:
// entry k = tokens of DP replica (block*m + k). Equal to ctx.num_tokens when the context has no
// per-replica counts.
std::vector<std::int64_t> module_group_tokens(const ForwardContext& ctx, const ParallelLayout& l,
                                              int world_rank, int m);

}  // namespace tpl::ops
