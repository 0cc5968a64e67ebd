#include "ops/gemm_collectives.h"

#include <algorithm>
#include <vector>

namespace tpl::ops {

int fused_chunk_count(std::int64_t rows, int configured) {
  if (configured > 0)
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(configured, rows)));
  return static_cast<int>(std::clamp<std::int64_t>(rows / 512, 1, 4));
}

Tensor gemm_all_reduce(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                       CommWorker* worker, int chunks) {
  Tensor y(g.out_dtype, x.rows(), g.out_features);
  if (!worker || chunks <= 1 || comm.size() == 1) {
    g.run_into(x, y, with_bias);
    comm.all_reduce(y);
    return y;
  }
  for (int i = 0; i < chunks; ++i) {
    const ShardRange r = shard_range(x.rows(), chunks, i);
    if (r.size == 0) continue;
    TensorView part = y.view().row_slice(r.offset, r.size);
    g.run_into(x.row_slice(r.offset, r.size), part, with_bias);
    worker->submit([&comm, part] { comm.all_reduce(part); });
  }
  worker->drain();
  return y;
}

Tensor gemm_reduce_scatter(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                           bool bias_after_reduce, CommWorker* worker, int chunks) {
  const int n = comm.size();
  const std::int64_t block = x.rows() / n;
  const bool bias_in_gemm = with_bias && !bias_after_reduce;
  Tensor out(g.out_dtype, block, g.out_features);
  if (!worker || chunks <= 1 || n == 1) {
    Tensor partial = g.run(x, bias_in_gemm);
    comm.reduce_scatter(partial, out);
  } else {
    std::vector<Tensor> parts;  // alive until drain()
    parts.reserve(chunks);
    for (int i = 0; i < chunks; ++i) {
      const ShardRange r = shard_range(block, chunks, i);
      if (r.size == 0) continue;
      parts.emplace_back(g.out_dtype, r.size * n, g.out_features);
      TensorView part = parts.back().view();
      for (int k = 0; k < n; ++k)
        g.run_into(x.row_slice(k * block + r.offset, r.size), part.row_slice(k * r.size, r.size),
                   bias_in_gemm);
      TensorView dst = out.view().row_slice(r.offset, r.size);
      worker->submit([&comm, part, dst] { comm.reduce_scatter(part, dst); });
    }
    worker->drain();
  }
  if (bias_after_reduce && with_bias) g.add_bias_terms(out);
  return out;
}

Tensor all_gather_gemm(const LocalGemm& g, TensorView x, Communicator& comm, std::int64_t pad,
                       bool bias_here, CommWorker* worker, int chunks) {
  const int n = comm.size();
  const std::int64_t b = x.rows(), keep = n * b - pad;
  Tensor y(g.out_dtype, keep, g.out_features);
  if (!worker || chunks <= 1 || n == 1) {
    Tensor all(x.dtype(), n * b, x.cols());
    comm.all_gather(x, all, 0);
    g.run_into(all.view().row_slice(0, keep), y, bias_here);
    return y;
  }
  std::vector<Tensor> send, recv;  // alive until every gather has run
  std::vector<std::uint64_t> tickets;
  std::vector<ShardRange> parts;
  for (int i = 0; i < chunks; ++i) {
    const ShardRange r = shard_range(b, chunks, i);
    if (r.size == 0) continue;
    send.push_back(Tensor::copy_of(x.row_slice(r.offset, r.size)));
    recv.emplace_back(x.dtype(), n * r.size, x.cols());
    TensorView in = send.back(), out = recv.back();
    tickets.push_back(worker->submit([&comm, in, out] { comm.all_gather(in, out, 0); }));
    parts.push_back(r);
  }
  for (std::size_t i = 0; i < parts.size(); ++i) {
    worker->wait(tickets[i]);
    const ShardRange r = parts[i];
    // recv[i] rows k*r.size.. are member k's rows k*b + r.offset.. of the padded batch.
    for (int k = 0; k < n; ++k) {
      const std::int64_t first = k * b + r.offset;
      const std::int64_t rows = std::min<std::int64_t>(r.size, keep - first);
      if (rows <= 0) continue;
      g.run_into(recv[i].view().row_slice(k * r.size, rows), y.view().row_slice(first, rows),
                 bias_here);
    }
  }
  worker->drain();
  return y;
}

}  // namespace tpl::ops
