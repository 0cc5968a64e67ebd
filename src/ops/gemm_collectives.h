// GEMM followed by a reduction. This is the seam for the fused, overlapped versions (the
// W8A8/overlap issue replaces the bodies with chunked GEMMs whose collectives run while the next
// chunk computes); callers do not change.
#pragma once

#include "tpl/communicator.h"
#include "tpl/linear_op.h"

namespace tpl::ops {

// Partial -> Replicated: y = all_reduce(x·Wᵀ (+ bias on this rank if with_bias)).
Tensor gemm_all_reduce(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias);

// Partial -> Shard(tokens): x has size*R rows; returns this member's R summed rows.
// bias_after_reduce adds the bias to the reduced rows on every member (each row lives on exactly
// one member afterwards), which is how the fused path counts it once; otherwise with_bias adds
// it before the reduction (callers pass it on rank 0 only).
Tensor gemm_reduce_scatter(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                           bool bias_after_reduce);

}  // namespace tpl::ops
