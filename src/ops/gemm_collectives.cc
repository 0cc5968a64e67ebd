#include "ops/gemm_collectives.h"

#include <algorithm>
#include <functional>
#include <vector>

namespace tpl::ops {

namespace {

// Runs the collectives of a fused path in the background, in submission order: as the
// communicator's own async collectives where they progress by themselves (NCCL, on its stream,
// ordered after the GEMM chunk already enqueued), else on the CommWorker's thread (MPI).
class Background {
 public:
  Background(Communicator& comm, CommWorker* worker) : comm_(comm), worker_(worker) {}
  // On an exception the caller's buffers go right after this object (it is declared after
  // them): let no collective run on them any more.
  ~Background() {
    try {
      drain();
    } catch (...) {
      // The exception in flight is the one to report.
    }
  }
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;
  static bool available(const Communicator& comm, const CommWorker* worker) {
    return comm.size() > 1 && (comm.progresses_async() || worker != nullptr);
  }

  std::size_t all_reduce(TensorView inout) {
    Communicator& c = comm_;
    return submit([&c, inout] { c.all_reduce(inout); },
                  [&c, inout] { return c.iall_reduce(inout); });
  }
  std::size_t reduce_scatter(TensorView in, TensorView out) {
    Communicator& c = comm_;
    return submit([&c, in, out] { c.reduce_scatter(in, out); },
                  [&c, in, out] { return c.ireduce_scatter(in, out); });
  }
  std::size_t all_gather(TensorView in, TensorView out) {
    Communicator& c = comm_;
    return submit([&c, in, out] { c.all_gather(in, out, 0); },
                  [&c, in, out] { return c.iall_gather(in, out, 0); });
  }
  // The result of collective `i` is in place (for the caller's later work).
  void wait(std::size_t i) {
    if (async()) {
      works_.at(i)->wait();
    } else {
      worker_->wait(tickets_.at(i));
    }
  }
  void drain() {
    if (async()) {
      for (auto& w : works_) w->wait();
    } else if (!tickets_.empty()) {
      worker_->drain();
    }
  }

 private:
  bool async() const { return comm_.progresses_async(); }
  std::size_t submit(std::function<void()> blocking, const std::function<WorkPtr()>& start) {
    if (async()) {
      works_.push_back(start());
      return works_.size() - 1;
    }
    tickets_.push_back(worker_->submit(std::move(blocking)));
    return tickets_.size() - 1;
  }
  Communicator& comm_;
  CommWorker* worker_;
  std::vector<WorkPtr> works_;
  std::vector<std::uint64_t> tickets_;
};

}  // namespace

int fused_chunk_count(std::int64_t rows, int configured) {
  if (configured > 0)
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(configured, rows)));
  return static_cast<int>(std::clamp<std::int64_t>(rows / 512, 1, 4));
}

Tensor gemm_all_reduce(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                       CommWorker* worker, int chunks) {
  Tensor y = g.runtime().empty(g.out_dtype, x.rows(), g.out_features);
  if (chunks <= 1 || !Background::available(comm, worker)) {
    // SHM has the GEMM write its addend straight into the rank's slot (no copy-in).
    comm.all_reduce_produced(y, [&](TensorView dst) { g.run_into(x, dst, with_bias); });
    return y;
  }
  Background bg(comm, worker);
  for (int i = 0; i < chunks; ++i) {
    const ShardRange r = shard_range(x.rows(), chunks, i);
    if (r.size == 0) continue;
    TensorView part = y.view().row_slice(r.offset, r.size);
    g.run_into(x.row_slice(r.offset, r.size), part, with_bias);
    bg.all_reduce(part);
  }
  bg.drain();
  return y;
}

Tensor gemm_reduce_scatter(const LocalGemm& g, TensorView x, Communicator& comm, bool with_bias,
                           bool bias_after_reduce, CommWorker* worker, int chunks) {
  Runtime& rt = g.runtime();
  const int n = comm.size();
  const std::int64_t block = x.rows() / n;
  const bool bias_in_gemm = with_bias && !bias_after_reduce;
  Tensor out = rt.empty(g.out_dtype, block, g.out_features);
  if (chunks <= 1 || !Background::available(comm, worker)) {
    Tensor partial = g.run(x, bias_in_gemm);
    comm.reduce_scatter(partial, out);
  } else {
    std::vector<Tensor> parts;  // alive until drain()
    parts.reserve(chunks);
    Background bg(comm, worker);
    for (int i = 0; i < chunks; ++i) {
      const ShardRange r = shard_range(block, chunks, i);
      if (r.size == 0) continue;
      parts.push_back(rt.empty(g.out_dtype, r.size * n, g.out_features));
      TensorView part = parts.back().view();
      for (int k = 0; k < n; ++k)
        g.run_into(x.row_slice(k * block + r.offset, r.size), part.row_slice(k * r.size, r.size),
                   bias_in_gemm);
      bg.reduce_scatter(part, out.view().row_slice(r.offset, r.size));
    }
    bg.drain();
  }
  if (bias_after_reduce && with_bias) g.add_bias_terms(out);
  return out;
}

Tensor all_gather_gemm(const LocalGemm& g, TensorView x, Communicator& comm, std::int64_t pad,
                       bool bias_here, CommWorker* worker, int chunks) {
  Runtime& rt = g.runtime();
  const int n = comm.size();
  const std::int64_t b = x.rows(), keep = n * b - pad;
  Tensor y = rt.empty(g.out_dtype, keep, g.out_features);
  if (chunks <= 1 || !Background::available(comm, worker)) {
    Tensor all = rt.empty(x.dtype(), n * b, x.cols());
    comm.all_gather(x, all, 0);
    g.run_into(all.view().row_slice(0, keep), y, bias_here);
    return y;
  }
  std::vector<Tensor> send, recv;  // alive until every gather has run
  std::vector<ShardRange> parts;
  send.reserve(chunks);
  recv.reserve(chunks);
  Background bg(comm, worker);
  for (int i = 0; i < chunks; ++i) {
    const ShardRange r = shard_range(b, chunks, i);
    if (r.size == 0) continue;
    send.push_back(rt.copy_of(x.row_slice(r.offset, r.size)));
    recv.push_back(rt.empty(x.dtype(), n * r.size, x.cols()));
    bg.all_gather(send.back(), recv.back());
    parts.push_back(r);
  }
  for (std::size_t i = 0; i < parts.size(); ++i) {
    bg.wait(i);
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
  bg.drain();
  return y;
}

}  // namespace tpl::ops
