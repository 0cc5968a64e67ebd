// MpiCommunicator: each collective maps onto one MPI collective. Arguments arrive validated
// (communicator.cc); this file only decides how the bytes reach MPI:
//  * contiguous f32/int32/int8 views go to MPI as they are;
//  * strided views are staged through contiguous buffers;
//  * bf16/f16 sums are staged through f32 (MPI has no 16-bit float sum, and summing in f32 then
//    rounding once is more accurate than rounding after every partial sum);
//  * bf16/f16 data movement uses MPI_UINT16_T, since only the bit patterns travel.
// Blocking and async forms share one code path per collective: the async form hands the
// staging buffers and the post-processing step (copy-back, conversion, column scatter) to an
// MpiWork, which runs it when the request completes.
#include "comm/mpi_communicator.h"

#include "comm/hier_communicator.h"

#include <algorithm>
#include <climits>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "tpl/error.h"

namespace tpl {

namespace {

bool is_float16(DType t) {
  return t == DType::kBF16 || t == DType::kF16;
}

// The MPI type that moves `t` unchanged (16-bit floats travel as raw bit patterns).
MPI_Datatype move_type(DType t) {
  switch (t) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI8:
      return MPI_INT8_T;
    case DType::kBF16:
    case DType::kF16:
      return MPI_UINT16_T;
  }
  return MPI_DATATYPE_NULL;
}

// MPI counts are int; larger messages would need derived datatypes, which nothing here needs.
int mpi_count(std::int64_t n, int rank, const char* op) {
  TPL_CHECK_T(n <= INT_MAX, Unsupported, (Where{std::string("mpi ") + op, rank}), "message of ", n,
              " elements exceeds MPI's int count");
  return static_cast<int>(n);
}

// Staging memory and the step that moves results from it into the caller's views. Staging
// Tensors may be moved (into an MpiWork) without their data pointers changing.
struct Staged {
  std::vector<Tensor> buffers;
  std::function<void()> finish;
};

void finish(Staged& st) {
  if (st.finish) st.finish();
}

// A contiguous f32 copy of a (possibly strided) bf16/f16/f32 view.
Tensor stage_to_f32(const TensorView& v) {
  Tensor t(DType::kF32, v.rows(), v.cols());
  for (std::int64_t r = 0; r < v.rows(); ++r)
    convert_to_f32(v.at(r, 0), v.dtype(), t.ptr<float>() + r * v.cols(),
                   static_cast<std::size_t>(v.cols()));
  return t;
}

// Rounds a contiguous f32 buffer (once, to nearest even) into a possibly strided view.
void unstage_from_f32(const float* src, const TensorView& v) {
  for (std::int64_t r = 0; r < v.rows(); ++r)
    convert_from_f32(src + r * v.cols(), v.at(r, 0), v.dtype(), static_cast<std::size_t>(v.cols()));
}

// Source pointer for MPI: the view itself when contiguous and not overlapping the output,
// else a contiguous copy kept in st (MPI forbids aliased send and receive buffers).
const void* contiguous_source(const TensorView& v, const TensorView& out, Staged& st) {
  if (v.contiguous() && !views_overlap(v, out)) return v.data();
  st.buffers.push_back(Tensor::copy_of(v));
  return st.buffers.back().data();
}

// Destination pointer for MPI: the view itself when contiguous, else a staging buffer that is
// copied into the view once the collective has completed.
void* contiguous_destination(const TensorView& v, Staged& st) {
  if (v.contiguous()) return v.data();
  st.buffers.emplace_back(v.dtype(), v.rows(), v.cols());
  const TensorView staging = st.buffers.back().view();
  st.finish = [staging, v] { copy_into(staging, v); };
  return staging.data();
}

// An in-flight nonblocking collective plus the staging it owns.
class MpiWork final : public Work {
 public:
  MpiWork(MPI_Request request, Staged staged, int rank)
      : request_(request), staged_(std::move(staged)), rank_(rank) {}
  MpiWork(const MpiWork&) = delete;
  MpiWork& operator=(const MpiWork&) = delete;

  ~MpiWork() override {
    // MPI may still be writing into buffers this object owns, so it must wait. An exception
    // cannot leave a destructor; a broken communicator fails the next collective instead.
    if (!done_) {
      try {
        wait();
      } catch (...) {
      }
    }
  }

  void watch(Watchdog::Scope scope) { scope_ = std::move(scope); }

  void wait() override {
    if (done_) return;
    TPL_MPI_CHECK(MPI_Wait(&request_, MPI_STATUS_IGNORE), rank_);
    complete();
  }

  bool test() override {
    if (done_) return true;
    int flag = 0;
    // MPI_Test is also what advances OpenMPI's nonblocking collectives (no progress thread).
    TPL_MPI_CHECK(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), rank_);
    if (flag) complete();
    return done_;
  }

 private:
  void complete() {
    done_ = true;  // set first: a throwing finish must not run twice from the destructor
    scope_.end();
    finish(staged_);
  }

  MPI_Request request_;
  Watchdog::Scope scope_;  // in flight from the post until completion
  Staged staged_;
  int rank_;
  bool done_ = false;
};

WorkPtr completed() {
  return std::make_unique<CompletedWork>();
}

// An async collective stays watched until it completes; one that completed at once is done.
WorkPtr watched(WorkPtr work, Watchdog::Scope scope) {
  if (auto* w = dynamic_cast<MpiWork*>(work.get())) w->watch(std::move(scope));
  return work;
}

// The group's members as world ranks (empty if MPI cannot say).
std::vector<int> world_ranks_of(MPI_Comm comm, int size) {
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  std::vector<int> in(static_cast<std::size_t>(size)), out(in.size());
  bool ok = MPI_Comm_group(comm, &group) == MPI_SUCCESS &&
            MPI_Comm_group(MPI_COMM_WORLD, &world) == MPI_SUCCESS;
  for (int i = 0; i < size; ++i) in[static_cast<std::size_t>(i)] = i;
  ok = ok && MPI_Group_translate_ranks(group, size, in.data(), world, out.data()) == MPI_SUCCESS;
  if (group != MPI_GROUP_NULL) MPI_Group_free(&group);
  if (world != MPI_GROUP_NULL) MPI_Group_free(&world);
  return ok ? out : std::vector<int>{};
}

std::string describe_group(const std::vector<int>& members, int size) {
  std::string ranks;
  if (!members.empty()) {
    const int shown = std::min(size, 16);
    for (int i = 0; i < shown; ++i)
      ranks += (i ? ", " : "") + std::to_string(members[static_cast<std::size_t>(i)]);
    if (shown < size) ranks += ", ...";
  }
  return "mpi group of " + std::to_string(size) + " rank" + (size == 1 ? "" : "s") +
         (ranks.empty() ? std::string() : " (world ranks " + ranks + ")");
}

WorkPtr pending(MPI_Request request, Staged st, int rank) {
  return std::make_unique<MpiWork>(request, std::move(st), rank);
}

// One function per collective. Blocking calls (async = false) finish before returning and
// return nullptr; async calls return the pending work.
WorkPtr run_all_reduce(MPI_Comm comm, int rank, TensorView inout, bool async) {
  if (inout.empty()) return async ? completed() : nullptr;
  Staged st;
  void* buf = inout.data();
  MPI_Datatype type = move_type(inout.dtype());
  if (is_float16(inout.dtype())) {
    st.buffers.push_back(stage_to_f32(inout));
    float* f = st.buffers.back().ptr<float>();
    buf = f;
    type = MPI_FLOAT;
    st.finish = [f, inout] { unstage_from_f32(f, inout); };
  } else if (!inout.contiguous()) {
    st.buffers.push_back(Tensor::copy_of(inout));
    const TensorView staging = st.buffers.back().view();
    buf = staging.data();
    st.finish = [staging, inout] { copy_into(staging, inout); };
  }
  const int count = mpi_count(inout.numel(), rank, "all_reduce");
  if (!async) {
    TPL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, count, type, MPI_SUM, comm), rank);
    finish(st);
    return nullptr;
  }
  MPI_Request req;
  TPL_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, count, type, MPI_SUM, comm, &req), rank);
  return pending(req, std::move(st), rank);
}

WorkPtr run_reduce_scatter(MPI_Comm comm, int rank, TensorView in, TensorView out, bool async) {
  if (out.empty()) return async ? completed() : nullptr;
  Staged st;
  const void* send;
  void* recv;
  MPI_Datatype type = move_type(in.dtype());
  if (is_float16(in.dtype())) {
    st.buffers.push_back(stage_to_f32(in));
    send = st.buffers.back().data();
    st.buffers.emplace_back(DType::kF32, out.rows(), out.cols());
    float* f = st.buffers.back().ptr<float>();
    recv = f;
    type = MPI_FLOAT;
    st.finish = [f, out] { unstage_from_f32(f, out); };
  } else {
    send = contiguous_source(in, out, st);
    recv = contiguous_destination(out, st);
  }
  const int count = mpi_count(out.numel(), rank, "reduce_scatter");
  if (!async) {
    TPL_MPI_CHECK(MPI_Reduce_scatter_block(send, recv, count, type, MPI_SUM, comm), rank);
    finish(st);
    return nullptr;
  }
  MPI_Request req;
  TPL_MPI_CHECK(MPI_Ireduce_scatter_block(send, recv, count, type, MPI_SUM, comm, &req), rank);
  return pending(req, std::move(st), rank);
}

WorkPtr run_all_gather(MPI_Comm comm, int rank, int size, TensorView in, TensorView out, int dim,
                       bool async) {
  if (in.empty()) return async ? completed() : nullptr;
  Staged st;
  const void* send = contiguous_source(in, out, st);
  void* recv;
  // Dim 0, and dim 1 with a single row, are plain concatenations of the members' chunks; dim 1
  // otherwise gathers [size, R, C] and scatters chunk k into columns [k*C, (k+1)*C).
  if (dim == 0 || in.rows() == 1) {
    recv = contiguous_destination(out, st);
  } else {
    st.buffers.emplace_back(in.dtype(), size * in.rows(), in.cols());
    const TensorView staging = st.buffers.back().view();
    recv = staging.data();
    st.finish = [staging, out, size, rows = in.rows(), cols = in.cols()] {
      for (int k = 0; k < size; ++k)
        copy_into(staging.row_slice(k * rows, rows), out.col_slice(k * cols, cols));
    };
  }
  const MPI_Datatype type = move_type(in.dtype());
  const int count = mpi_count(in.numel(), rank, "all_gather");
  if (!async) {
    TPL_MPI_CHECK(MPI_Allgather(send, count, type, recv, count, type, comm), rank);
    finish(st);
    return nullptr;
  }
  MPI_Request req;
  TPL_MPI_CHECK(MPI_Iallgather(send, count, type, recv, count, type, comm, &req), rank);
  return pending(req, std::move(st), rank);
}

WorkPtr run_all_to_all(MPI_Comm comm, int rank, int size, TensorView in, TensorView out,
                       bool async) {
  if (in.empty()) return async ? completed() : nullptr;
  Staged st;
  // Views are contiguous (validated). Aliased in/out would need MPI_IN_PLACE, which libnbc's
  // Ialltoall does not implement everywhere, so an aliased input is copied instead.
  const void* send = contiguous_source(in, out, st);
  const MPI_Datatype type = move_type(in.dtype());
  const int count = mpi_count(in.numel() / size, rank, "all_to_all");
  if (!async) {
    TPL_MPI_CHECK(MPI_Alltoall(send, count, type, out.data(), count, type, comm), rank);
    return nullptr;
  }
  MPI_Request req;
  TPL_MPI_CHECK(MPI_Ialltoall(send, count, type, out.data(), count, type, comm, &req), rank);
  return pending(req, std::move(st), rank);
}

WorkPtr run_broadcast(MPI_Comm comm, int rank, TensorView buf, int root, bool async) {
  if (buf.empty()) return async ? completed() : nullptr;
  Staged st;
  void* data = buf.data();
  if (!buf.contiguous()) {
    // The root sends from a contiguous copy; the others receive into one and copy it back.
    if (rank == root) {
      st.buffers.push_back(Tensor::copy_of(buf));
      data = st.buffers.back().data();
    } else {
      data = contiguous_destination(buf, st);
    }
  }
  const MPI_Datatype type = move_type(buf.dtype());
  const int count = mpi_count(buf.numel(), rank, "broadcast");
  if (!async) {
    TPL_MPI_CHECK(MPI_Bcast(data, count, type, root, comm), rank);
    finish(st);
    return nullptr;
  }
  MPI_Request req;
  TPL_MPI_CHECK(MPI_Ibcast(data, count, type, root, comm, &req), rank);
  return pending(req, std::move(st), rank);
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, Watchdog* watchdog, int node_part)
    : comm_(comm), watchdog_(watchdog), node_part_(node_part) {
  TPL_CHECK(comm != MPI_COMM_NULL, (Where{"mpi communicator"}), "null MPI communicator");
  // Failures come back as return codes so TPL_MPI_CHECK can throw CommError naming the call.
  TPL_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), -1);
  TPL_MPI_CHECK(MPI_Comm_rank(comm_, &rank_), -1);
  TPL_MPI_CHECK(MPI_Comm_size(comm_, &size_), rank_);
  world_ranks_ = world_ranks_of(comm_, size_);
  desc_ = describe_group(world_ranks_, size_);
  if (watchdog_) key_ = watchdog_->register_group(desc_, world_ranks_);
}

Watchdog::Scope MpiCommunicator::watch(const char* op, std::size_t bytes) {
  if (!watchdog_) return {};
  return watchdog_->watch(op, &desc_, ++seq_, static_cast<std::int64_t>(bytes), key_);
}

MpiCommunicator::~MpiCommunicator() {
  if (watchdog_) watchdog_->unregister_group(key_);
  if (comm_ == MPI_COMM_WORLD || comm_ == MPI_COMM_SELF || comm_ == MPI_COMM_NULL) return;
  // Freeing after MPI_Finalize is erroneous; the handle is gone with MPI by then.
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&comm_);
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub = MPI_COMM_NULL;
  {
    auto s = watch("split", 0);
    TPL_MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), rank_);
  }
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(sub, watchdog_, node_part_);
}

std::unique_ptr<Communicator> MpiCommunicator::split_as(int color, int key, CommKind kind) {
  std::unique_ptr<Communicator> sub = split(color, key);
  if (!sub || kind == CommKind::kMpi) return sub;
  return make_node_communicator(
      std::unique_ptr<MpiCommunicator>(static_cast<MpiCommunicator*>(sub.release())), ShmOptions{});
}

bool MpiCommunicator::all_true(bool value) {
  int v = value ? 1 : 0;
  auto s = watch("all_true", sizeof v);
  TPL_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_LAND, comm_), rank_);
  return v != 0;
}

void MpiCommunicator::do_all_reduce(TensorView inout) {
  auto s = watch("all_reduce", inout.nbytes());
  run_all_reduce(comm_, rank_, inout, false);
}
void MpiCommunicator::do_reduce_scatter(TensorView in, TensorView out) {
  auto s = watch("reduce_scatter", in.nbytes());
  run_reduce_scatter(comm_, rank_, in, out, false);
}
void MpiCommunicator::do_all_gather(TensorView in, TensorView out, int dim) {
  auto s = watch("all_gather", out.nbytes());
  run_all_gather(comm_, rank_, size_, in, out, dim, false);
}
void MpiCommunicator::do_all_to_all(TensorView in, TensorView out) {
  auto s = watch("all_to_all", in.nbytes());
  run_all_to_all(comm_, rank_, size_, in, out, false);
}
void MpiCommunicator::do_broadcast(TensorView buf, int root) {
  auto s = watch("broadcast", buf.nbytes());
  run_broadcast(comm_, rank_, buf, root, false);
}
void MpiCommunicator::do_barrier() {
  auto s = watch("barrier", 0);
  TPL_MPI_CHECK(MPI_Barrier(comm_), rank_);
}

WorkPtr MpiCommunicator::do_iall_reduce(TensorView inout) {
  auto s = watch("iall_reduce", inout.nbytes());
  return watched(run_all_reduce(comm_, rank_, inout, true), std::move(s));
}
WorkPtr MpiCommunicator::do_ireduce_scatter(TensorView in, TensorView out) {
  auto s = watch("ireduce_scatter", in.nbytes());
  return watched(run_reduce_scatter(comm_, rank_, in, out, true), std::move(s));
}
WorkPtr MpiCommunicator::do_iall_gather(TensorView in, TensorView out, int dim) {
  auto s = watch("iall_gather", out.nbytes());
  return watched(run_all_gather(comm_, rank_, size_, in, out, dim, true), std::move(s));
}
void MpiCommunicator::do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts,
                                      TensorView out,
                                      const std::vector<std::int64_t>& recv_counts) {
  auto s = watch("all_to_all_v", in.nbytes());
  Staged st;
  const void* send = contiguous_source(in, out, st);
  std::vector<int> sc(static_cast<std::size_t>(size_)), sd(sc.size()), rc(sc.size()), rd(sc.size());
  std::int64_t so = 0, ro = 0;
  for (std::size_t k = 0; k < sc.size(); ++k) {
    sc[k] = mpi_count(send_counts[k], rank_, "all_to_all_v");
    rc[k] = mpi_count(recv_counts[k], rank_, "all_to_all_v");
    sd[k] = mpi_count(so, rank_, "all_to_all_v");
    rd[k] = mpi_count(ro, rank_, "all_to_all_v");
    so += send_counts[k];
    ro += recv_counts[k];
  }
  const MPI_Datatype type = move_type(in.dtype());
  TPL_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), type, out.data(), rc.data(), rd.data(),
                              type, comm_),
                rank_);
}
WorkPtr MpiCommunicator::do_iall_to_all(TensorView in, TensorView out) {
  auto s = watch("iall_to_all", in.nbytes());
  return watched(run_all_to_all(comm_, rank_, size_, in, out, true), std::move(s));
}
WorkPtr MpiCommunicator::do_ibroadcast(TensorView buf, int root) {
  auto s = watch("ibroadcast", buf.nbytes());
  return watched(run_broadcast(comm_, rank_, buf, root, true), std::move(s));
}

}  // namespace tpl
