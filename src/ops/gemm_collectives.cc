#include "ops/gemm_collectives.h"

namespace tpl::ops {

Tensor gemm_all_reduce(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias) {
  Tensor y = g.run(x, with_bias);
  comm.all_reduce(y);
  return y;
}

Tensor gemm_reduce_scatter(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                           bool bias_after_reduce) {
  Tensor partial = g.run(x, with_bias && !bias_after_reduce);
  Tensor out(partial.dtype(), partial.rows() / comm.size(), partial.cols());
  comm.reduce_scatter(partial, out);
  if (bias_after_reduce && with_bias && g.has_bias()) add_row_bias(out, g.bias);
  return out;
}

}  // namespace tpl::ops
