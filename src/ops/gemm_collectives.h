// GEMM followed by a reduction: the unfused form, and the fused form that splits the GEMM into
// chunks and reduces chunk k in the background while chunk k+1 computes: on a CommWorker thread
// for MPI, as stream-ordered async collectives for NCCL (Communicator::progresses_async).
//
// Chunking never changes which operands an element's reduction sums: chunks are row blocks and
// a row's partial sums are the same whichever chunk computes them. (MPI chooses its summation
// order by message size, so for more than 2 ranks the f32 rounding of a sum may differ between
// chunk sizes; with 2 ranks a+b = b+a and the results are bit-identical. See docs/ops.md.)
#pragma once

#include "tpl/comm_worker.h"
#include "tpl/communicator.h"
#include "tpl/linear_op.h"

namespace tpl::ops {

// Chunk count: `configured` when > 0, else one chunk per 512 rows, at most 4 (overlap needs a
// chunk long enough to hide a collective; below 512 rows a collective is latency-bound).
int fused_chunk_count(std::int64_t rows, int configured);

// Partial -> Replicated: y = all_reduce(x·Wᵀ (+ bias on this rank if with_bias)). With overlap
// (a worker, or a communicator that progresses on its own)
// and more than one chunk, chunks of rows overlap their all-reduce with the next GEMM.
Tensor gemm_all_reduce(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                       CommWorker* worker = nullptr, int chunks = 1);

// Partial -> Shard(tokens): x has size*R rows; returns this member's R summed rows.
// bias_after_reduce adds the bias to the reduced rows on every member (each row then lives on
// exactly one member), which is how the fused path counts it once; otherwise with_bias adds it
// before the reduction (callers pass it on rank 0 only). With a worker and more than one chunk,
// chunk i holds sub-block i of every member's block, reduce-scattered while chunk i+1 computes.
Tensor gemm_reduce_scatter(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                           bool bias_after_reduce, CommWorker* worker = nullptr, int chunks = 1);

// Shard(tokens) -> all tokens, then the GEMM: x is this member's [b, K] block of a padded batch
// of size*b rows; returns y = (all-gather(x) without its last `pad` rows)·Wᵀ, [size*b - pad, N].
// With a worker and more than one chunk, sub-block i of every member is gathered on the worker
// while the GEMM runs on the sub-blocks already received. x may be int8 (W8A8 gathers int8).
Tensor all_gather_gemm(const LocalGemm& g, TensorView x, Communicator& comm, std::int64_t pad,
                       bool bias_here, CommWorker* worker = nullptr, int chunks = 1);

}  // namespace tpl::ops
