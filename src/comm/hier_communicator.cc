#include "comm/hier_communicator.h"

#include <algorithm>
#include <string>
#include <vector>

#include "comm/shm_communicator.h"
#include "tpl/error.h"

namespace tpl {

namespace {

constexpr int kChainTag = 7101;  // a node's partial, to the next node
constexpr int kBackTag = 7102;   // the total, from the last node

bool is_16bit_float(DType dt) {
  return dt == DType::kBF16 || dt == DType::kF16;
}

// The dtype the chain folds in: f32 for every float (16-bit ones widened), i32 as it is.
DType fold_dtype(DType dt) {
  return dt == DType::kI32 ? DType::kI32 : DType::kF32;
}

MPI_Datatype mpi_type(DType dt) {
  return dt == DType::kI32 ? MPI_INT32_T : MPI_FLOAT;
}

// A flat view of `count` elements at element `offset` of contiguous `w`.
TensorView flat(TensorView w, std::int64_t offset, std::int64_t count) {
  auto* p =
      static_cast<std::byte*>(w.data()) + static_cast<std::size_t>(offset) * dtype_size(w.dtype());
  return TensorView(p, w.dtype(), 1, count);
}

}  // namespace

HierCommunicator::HierCommunicator(std::unique_ptr<MpiCommunicator> mpi, const NodeLayout& layout,
                                   ShmOptions options)
    : mpi_(std::move(mpi)), options_(options) {
  const int me = mpi_->rank();
  TPL_CHECK_T(layout.nodes >= 2 && layout.consecutive, ConfigError, (Where{"shm+mpi", me}),
              "the hierarchical communicator needs consecutive nodes, got ", layout.describe());
  node_ = layout.node_of[static_cast<std::size_t>(me)];
  for (int j = 0; j < layout.nodes; ++j) {
    const std::vector<int> m = layout.members(j);
    first_.push_back(m.front());
    count_.push_back(static_cast<int>(m.size()));
  }
  // Node groups keep the group's order; the leaders' group is ordered by node.
  std::unique_ptr<Communicator> local = mpi_->split(node_, me);
  local_ = std::make_unique<ShmCommunicator>(
      std::unique_ptr<MpiCommunicator>(static_cast<MpiCommunicator*>(local.release())), options_);
  std::unique_ptr<Communicator> lead = mpi_->split(local_->rank() == 0 ? 0 : -1, me);
  leaders_.reset(static_cast<MpiCommunicator*>(lead.release()));
}

std::unique_ptr<Communicator> HierCommunicator::split(int color, int key) {
  std::unique_ptr<Communicator> sub = mpi_->split(color, key);
  if (!sub) return nullptr;
  return make_node_communicator(
      std::unique_ptr<MpiCommunicator>(static_cast<MpiCommunicator*>(sub.release())), options_);
}

void HierCommunicator::chain(TensorView w, TensorView back) {
  const std::int64_t total = w.numel();
  const std::size_t es = dtype_size(w.dtype());
  // Four slots' worth per step: several steps in flight keep every node busy on large
  // messages, and the SHM all-reduce of a step stays within a few rounds.
  const std::int64_t chunk =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(4 * options_.slot_bytes / es));
  const MPI_Datatype type = mpi_type(w.dtype());
  const bool returns = !back.empty();
  Tensor prefix;
  if (leader() && node_ > 0) prefix = Tensor(w.dtype(), 1, std::min(chunk, total));
  std::vector<MPI_Request> pending;
  Watchdog::Scope watched =
      leader() ? leaders_->watch("chain", static_cast<std::size_t>(total) * es) : Watchdog::Scope();
  const int lr = leader() ? leaders_->rank() : -1;
  // The total's chunks, posted first so they land while this leader works on later ones.
  if (leader() && node_ < last() && returns)
    for (std::int64_t o = 0; o < total; o += chunk) {
      pending.emplace_back();
      TPL_MPI_CHECK(MPI_Irecv(flat(back, o, 0).data(), static_cast<int>(std::min(chunk, total - o)),
                              type, last(), kBackTag, leaders_->handle(), &pending.back()),
                    lr);
    }
  for (std::int64_t o = 0; o < total; o += chunk) {
    const std::int64_t len = std::min(chunk, total - o);
    TensorView part = flat(w, o, len);
    if (leader() && node_ > 0) {
      TPL_MPI_CHECK(MPI_Recv(prefix.data(), static_cast<int>(len), type, node_ - 1, kChainTag,
                             leaders_->handle(), MPI_STATUS_IGNORE),
                    lr);
      // The fold's step from the prefix to this node's first rank: prefix + x, one IEEE add
      // per element (or a wrap-around int add), as SHM's sum makes it.
      if (w.dtype() == DType::kF32) {
        const float* p = prefix.ptr<float>();
        float* x = part.ptr<float>();
        for (std::int64_t i = 0; i < len; ++i) x[i] = p[i] + x[i];
      } else {
        const auto* p = prefix.ptr<std::int32_t>();
        auto* x = part.ptr<std::int32_t>();
        for (std::int64_t i = 0; i < len; ++i)
          x[i] = static_cast<std::int32_t>(static_cast<std::uint32_t>(p[i]) +
                                           static_cast<std::uint32_t>(x[i]));
      }
    }
    local_->all_reduce(part);
    if (!leader()) continue;
    // On: the partial to the next node; or, from the last node, the total to every leader
    // (directly: a few nodes; a tree would serve many).
    const int n_to = node_ < last() ? 1 : returns ? last() : 0;
    for (int t = 0; t < n_to; ++t) {
      pending.emplace_back();
      TPL_MPI_CHECK(
          MPI_Isend(part.data(), static_cast<int>(len), type, node_ < last() ? node_ + 1 : t,
                    node_ < last() ? kChainTag : kBackTag, leaders_->handle(), &pending.back()),
          lr);
    }
    // MPI progresses nonblocking transfers inside MPI calls only; SHM makes none.
    int done = 0;
    TPL_MPI_CHECK(
        MPI_Testall(static_cast<int>(pending.size()), pending.data(), &done, MPI_STATUSES_IGNORE),
        lr);
  }
  if (!pending.empty())
    TPL_MPI_CHECK(
        MPI_Waitall(static_cast<int>(pending.size()), pending.data(), MPI_STATUSES_IGNORE), lr);
}

void HierCommunicator::do_all_reduce(TensorView inout) {
  if (inout.empty()) return;
  auto watched = mpi_->watch("all_reduce", inout.nbytes());
  const DType dt = inout.dtype();
  const bool in_place = !is_16bit_float(dt) && inout.contiguous();
  Tensor staged;
  if (!in_place) {
    staged = Tensor(fold_dtype(dt), inout.rows(), inout.cols());
    convert_into(inout, staged.view());
  }
  const TensorView w = in_place ? inout : staged.view();
  // The other nodes' leaders receive the total, chunk by chunk as the last node finishes it,
  // into `back` (w holds their partials, in flight to the next node); their nodes get it by SHM.
  Tensor back;
  if (leader() && node_ != last()) back = Tensor(w.dtype(), w.rows(), w.cols());
  chain(w, leader() && node_ != last() ? back.view() : w);
  if (node_ != last()) local_->broadcast(leader() ? back.view() : w, 0);
  if (leader() && node_ != last()) copy_into(back.view(), w);
  if (!in_place) convert_into(w, inout);
}

void HierCommunicator::do_reduce_scatter(TensorView in, TensorView out) {
  if (in.empty()) return;
  auto watched = mpi_->watch("reduce_scatter", in.nbytes());
  // The whole input runs the chain (each node's partial is the next node's prefix); then the
  // last node's leader scatters to each leader its node's rows.
  Tensor w(fold_dtype(in.dtype()), in.rows(), in.cols());
  convert_into(in, w.view());
  const std::int64_t block = out.numel();
  chain(w.view(), TensorView());
  if (leader()) {
    std::vector<int> counts, displs;
    for (int j = 0; j < nodes(); ++j) {
      counts.push_back(static_cast<int>(count_[static_cast<std::size_t>(j)] * block));
      displs.push_back(static_cast<int>(first_[static_cast<std::size_t>(j)] * block));
    }
    const MPI_Datatype type = mpi_type(w.dtype());
    const int lr = leaders_->rank();
    auto s = leaders_->watch("scatterv", w.nbytes());
    void* mine = flat(w.view(), displs[static_cast<std::size_t>(node_)], 0).data();
    if (node_ == last())
      TPL_MPI_CHECK(MPI_Scatterv(w.data(), counts.data(), displs.data(), type, MPI_IN_PLACE, 0,
                                 type, last(), leaders_->handle()),
                    lr);
    else
      TPL_MPI_CHECK(
          MPI_Scatterv(nullptr, counts.data(), displs.data(), type, mine,
                       counts[static_cast<std::size_t>(node_)], type, last(), leaders_->handle()),
          lr);
  }
  const std::size_t j = static_cast<std::size_t>(node_);
  if (node_ != last()) local_->broadcast(flat(w.view(), first_[j] * block, count_[j] * block), 0);
  convert_into(flat(w.view(), static_cast<std::int64_t>(rank()) * block, block)
                   .reshape(out.rows(), out.cols()),
               out);
}

void HierCommunicator::do_all_gather(TensorView in, TensorView out, int dim) {
  mpi_->all_gather(in, out, dim);
}
void HierCommunicator::do_all_to_all(TensorView in, TensorView out) {
  mpi_->all_to_all(in, out);
}
void HierCommunicator::do_broadcast(TensorView buf, int root) {
  mpi_->broadcast(buf, root);
}
void HierCommunicator::do_barrier() {
  mpi_->barrier();
}

WorkPtr HierCommunicator::do_iall_reduce(TensorView inout) {
  do_all_reduce(inout);
  return std::make_unique<CompletedWork>();
}
WorkPtr HierCommunicator::do_ireduce_scatter(TensorView in, TensorView out) {
  do_reduce_scatter(in, out);
  return std::make_unique<CompletedWork>();
}
WorkPtr HierCommunicator::do_iall_gather(TensorView in, TensorView out, int dim) {
  return mpi_->iall_gather(in, out, dim);
}
void HierCommunicator::do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts,
                                       TensorView out,
                                       const std::vector<std::int64_t>& recv_counts) {
  mpi_->all_to_all_v(in, send_counts, out, recv_counts);
}
WorkPtr HierCommunicator::do_iall_to_all(TensorView in, TensorView out) {
  return mpi_->iall_to_all(in, out);
}
WorkPtr HierCommunicator::do_ibroadcast(TensorView buf, int root) {
  return mpi_->ibroadcast(buf, root);
}

std::unique_ptr<Communicator> make_node_communicator(std::unique_ptr<MpiCommunicator> mpi,
                                                     const ShmOptions& options) {
  // Agreed over the whole group (a node's SHM group alone would leave the other nodes waiting),
  // so options that differ between ranks fail alike.
  if (!mpi->all_true(ShmGroup::slot_bytes_ok(options.slot_bytes)))
    TPL_THROW(InvalidArgument, (Where{"shm", mpi->rank()}),
              "ShmOptions::slot_bytes must be a multiple of 64 of at least ",
              ShmGroup::kMinSlotBytes, " on every rank; this rank has ", options.slot_bytes);
  const NodeLayout layout = node_layout(*mpi);  // the same on every member
  if (layout.nodes == 1) return std::make_unique<ShmCommunicator>(std::move(mpi), options);
  if (!layout.consecutive)
    TPL_THROW(ConfigError, (Where{"shm", mpi->rank()}),
              "TPL_COMM=shm across nodes needs each node's ranks consecutive in the group (as "
              "mpirun --map-by slot or core places them), but the group of ",
              mpi->size(), " ranks is laid out as ", layout.describe(), "; use TPL_COMM=mpi");
  return std::make_unique<HierCommunicator>(std::move(mpi), layout, options);
}

std::unique_ptr<Communicator> make_shm_communicator(Communicator& group,
                                                    const ShmOptions& options) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&group);
  if (!group.all_true(mpi != nullptr))
    TPL_THROW(ConfigError, (Where{"shm", group.rank()}),
              "an SHM communicator is built over an MPI communicator, not '", group.name(), "'");
  // A duplicate of the group's ranks (same order), owned by the SHM communicator.
  std::unique_ptr<Communicator> dup = mpi->split(0, mpi->rank());
  return make_node_communicator(
      std::unique_ptr<MpiCommunicator>(static_cast<MpiCommunicator*>(dup.release())), options);
}

}  // namespace tpl
