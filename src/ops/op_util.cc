#include "ops/op_util.h"

#include <algorithm>

#include "tpl/error.h"

namespace tpl {

namespace ops {

Tensor pad_rows(Runtime& rt, TensorView x, std::int64_t pad) {
  Tensor out = rt.empty(x.dtype(), x.rows() + pad, x.cols());
  rt.copy(x, out.view().row_slice(0, x.rows()));
  rt.fill_zero(out.view().row_slice(x.rows(), pad));
  return out;
}

Tensor first_rows(Runtime& rt, TensorView x, std::int64_t rows) {
  return rt.copy_of(x.row_slice(0, rows));
}

TensorView input_parallel(TensorView x, const LinearFlags& f, int size, int rank,
                          std::int64_t unit) {
  if (f.input_is_parallel || size == 1) return x;
  const ShardRange r = shard_range_units(x.cols() / unit, unit, size, rank);
  return x.col_slice(r.offset, r.size);
}

Tensor gather_tokens(Runtime& rt, Communicator& comm, TensorView x) {
  Tensor out = rt.empty(x.dtype(), x.rows() * comm.size(), x.cols());
  comm.all_gather(x, out, 0);
  return out;
}

Tensor gather_features(Runtime& rt, Communicator& comm, TensorView x, std::int64_t total_cols) {
  const int n = comm.size();
  if (total_cols <= 0) total_cols = x.cols() * n;
  const ShardRange mine = shard_range(total_cols, n, comm.rank());
  TPL_CHECK_EQ(mine.size, x.cols(), (Where{"gather_features", comm.rank()}),
               "local shard width does not follow the uneven split of ", total_cols);
  Tensor out = rt.empty(x.dtype(), x.rows(), total_cols);
  if (total_cols % n == 0) {
    comm.all_gather(x, out, 1);
    return out;
  }
  // Uneven shards: gather equal-width (padded) blocks, then compact.
  const std::int64_t w = shard_range(total_cols, n, 0).size;
  Tensor padded = rt.zeros(x.dtype(), x.rows(), w);
  rt.copy(x, padded.view().col_slice(0, x.cols()));
  Tensor all = rt.empty(x.dtype(), x.rows(), w * n);
  comm.all_gather(padded, all, 1);
  for (int k = 0; k < n; ++k) {
    const ShardRange r = shard_range(total_cols, n, k);
    rt.copy(all.view().col_slice(k * w, r.size), out.view().col_slice(r.offset, r.size));
  }
  return out;
}

std::vector<std::int64_t> module_group_tokens(const ForwardContext& ctx, const ParallelLayout& l,
                                              int world_rank, int m) {
  std::vector<std::int64_t> v(m, ctx.num_tokens);
  if (ctx.tokens_across_dp.empty()) return v;
  const RankCoord rc = coord_of(l, world_rank);
  const int block = rc.d / m;
  for (int k = 0; k < m; ++k) v[k] = ctx.tokens_across_dp.at(block * m + k);
  return v;
}

}  // namespace ops
}  // namespace tpl
