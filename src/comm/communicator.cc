// Argument validation shared by every Communicator implementation (NVI): a malformed call
// fails here, identically on every backend, before anything is sent.
#include "tpl/communicator.h"

#include "tpl/error.h"

namespace tpl {

namespace {
bool is_float16(DType t) {
  return t == DType::kBF16 || t == DType::kF16;
}
}  // namespace

bool Communicator::do_supports(Collective c, DType dtype) const {
  switch (c) {
    case Collective::kAllReduce:
    case Collective::kReduceScatter:
      return dtype == DType::kF32 || dtype == DType::kI32 || is_float16(dtype);
    case Collective::kAllGather:
    case Collective::kAllToAll:
    case Collective::kBroadcast:
      return true;
  }
  return false;
}

bool Communicator::supports(Collective c, DType dtype) const {
  return do_supports(c, dtype);
}

void Communicator::check_reduce(const char* op, const TensorView& t) const {
  const Where w{std::string(name()) + " " + op, rank()};
  TPL_CHECK(t.device() == Device::kHost || name() == "nccl", w, "tensor on the wrong device");
  TPL_CHECK(supports(Collective::kAllReduce, t.dtype()), w, "sum of ", dtype_name(t.dtype()),
            " is not supported (int8 tensors can only be moved, not reduced)");
}

void Communicator::check_reduce_scatter(const TensorView& in, const TensorView& out) const {
  check_reduce("reduce_scatter", in);
  const Where w{std::string(name()) + " reduce_scatter", rank()};
  TPL_CHECK_EQ(in.dtype(), out.dtype(), w);
  TPL_CHECK_EQ(in.cols(), out.cols(), w, "in ", in.describe(), " out ", out.describe());
  TPL_CHECK_EQ(in.rows(), out.rows() * size(), w,
               "reduce_scatter needs equal chunks: in rows = group size x out rows; in ",
               in.describe(), " out ", out.describe(), " group size ", size());
}

void Communicator::check_all_gather(const TensorView& in, const TensorView& out, int dim) const {
  const Where w{std::string(name()) + " all_gather", rank()};
  TPL_CHECK(dim == 0 || dim == 1 || dim == -1, w, "dim must be 0 or 1 (last), got ", dim);
  TPL_CHECK_EQ(in.dtype(), out.dtype(), w);
  if (dim == 0) {
    TPL_CHECK(out.rows() == in.rows() * size() && out.cols() == in.cols(), w, "in ", in.describe(),
              " out ", out.describe(), " group size ", size());
  } else {
    TPL_CHECK(out.cols() == in.cols() * size() && out.rows() == in.rows(), w, "in ", in.describe(),
              " out ", out.describe(), " group size ", size());
  }
}

void Communicator::check_all_to_all(const TensorView& in, const TensorView& out) const {
  const Where w{std::string(name()) + " all_to_all", rank()};
  TPL_CHECK_EQ(in.dtype(), out.dtype(), w);
  TPL_CHECK_EQ(in.numel(), out.numel(), w, "in ", in.describe(), " out ", out.describe());
  TPL_CHECK_EQ(in.numel() % size(), 0, w, "element count ", in.numel(),
               " is not divisible by the group size ", size());
  TPL_CHECK(in.contiguous() && out.contiguous(), w, "all_to_all needs contiguous views");
}

void Communicator::check_broadcast(const TensorView& buf, int root) const {
  const Where w{std::string(name()) + " broadcast", rank()};
  TPL_CHECK(root >= 0 && root < size(), w, "root ", root, " outside group of size ", size());
  (void)buf;
}

void Communicator::count(Collective c, const TensorView& t, int root) {
  const double n = size();
  ++stats_.calls;
  if (n <= 1) return;
  const bool reduce = c == Collective::kAllReduce || c == Collective::kReduceScatter;
  const double elem = reduce && is_float16(t.dtype()) ? 4.0 : double(dtype_size(t.dtype()));
  // t is the input of a reduce-scatter and the output of an all-gather: S either way.
  stats_.bytes_sent +=
      collective_bytes_sent(c, double(t.numel()) * elem, static_cast<int>(n), root == rank());
}

double collective_bytes_sent(Collective c, double s, int n, bool is_root) {
  if (n <= 1) return 0;
  const double f = double(n - 1) / n;
  switch (c) {
    case Collective::kAllReduce:
      return 2 * f * s;
    case Collective::kReduceScatter:
    case Collective::kAllGather:
    case Collective::kAllToAll:
      return f * s;
    case Collective::kBroadcast:
      return is_root ? s : 0;
  }
  return 0;
}

const char* comm_kind_name(CommKind k) {
  return k == CommKind::kMpi ? "mpi" : "shm";
}

CommKind parse_comm_kind(const std::string& s, const std::string& where) {
  if (s == "mpi") return CommKind::kMpi;
  if (s == "shm") return CommKind::kShm;
  TPL_THROW(ConfigError, Where{where}, "a communicator must be 'mpi' or 'shm', got '", s, "'");
}

std::string Communicator::kind_name() const {
  const std::string n = name();
  return n == "shm+mpi" ? "shm" : n;
}

std::unique_ptr<Communicator> Communicator::split_as(int color, int key, CommKind kind) {
  // Every member has the same kind, so all of them throw here, before any message.
  TPL_CHECK_T(kind_name() == comm_kind_name(kind), Unsupported, (Where{"split", rank()}), "a '",
              name(), "' communicator cannot make a group served by ", comm_kind_name(kind));
  return split(color, key);
}

void Communicator::all_reduce(TensorView inout) {
  check_reduce("all_reduce", inout);
  count(Collective::kAllReduce, inout);
  do_all_reduce(inout);
}
void Communicator::all_reduce_produced(TensorView out, const Producer& produce) {
  check_reduce("all_reduce", out);
  count(Collective::kAllReduce, out);
  do_all_reduce_produced(out, produce);
}
void Communicator::reduce_scatter(TensorView in, TensorView out) {
  check_reduce_scatter(in, out);
  count(Collective::kReduceScatter, in);
  do_reduce_scatter(in, out);
}
void Communicator::all_gather(TensorView in, TensorView out, int dim) {
  check_all_gather(in, out, dim);
  count(Collective::kAllGather, out);
  do_all_gather(in, out, dim == -1 ? 1 : dim);
}
void Communicator::check_all_to_all_v(const TensorView& in,
                                      const std::vector<std::int64_t>& send_counts,
                                      const TensorView& out,
                                      const std::vector<std::int64_t>& recv_counts) const {
  const Where w{std::string(name()) + " all_to_all_v", rank()};
  TPL_CHECK_EQ(in.dtype(), out.dtype(), w);
  TPL_CHECK(in.contiguous() && out.contiguous(), w, "all_to_all_v needs contiguous views");
  const auto n = static_cast<std::size_t>(size());
  TPL_CHECK(send_counts.size() == n && recv_counts.size() == n, w, "needs one send and one ",
            "receive count per member (", size(), "), got ", send_counts.size(), " and ",
            recv_counts.size());
  std::int64_t sent = 0, received = 0;
  for (std::size_t k = 0; k < n; ++k) {
    TPL_CHECK(send_counts[k] >= 0 && recv_counts[k] >= 0, w, "negative count for member ", k);
    sent += send_counts[k];
    received += recv_counts[k];
  }
  TPL_CHECK_EQ(sent, in.numel(), w, "the send counts must add up to in ", in.describe());
  TPL_CHECK_EQ(received, out.numel(), w, "the receive counts must add up to out ", out.describe());
  TPL_CHECK_EQ(send_counts[static_cast<std::size_t>(rank())],
               recv_counts[static_cast<std::size_t>(rank())], w,
               "the piece a member sends itself is the piece it receives");
}
void Communicator::all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts,
                                TensorView out, const std::vector<std::int64_t>& recv_counts) {
  check_all_to_all_v(in, send_counts, out, recv_counts);
  ++stats_.calls;
  const std::int64_t others = in.numel() - send_counts[static_cast<std::size_t>(rank())];
  stats_.bytes_sent += double(others) * double(dtype_size(in.dtype()));
  do_all_to_all_v(in, send_counts, out, recv_counts);
}
void Communicator::all_to_all(TensorView in, TensorView out) {
  check_all_to_all(in, out);
  count(Collective::kAllToAll, in);
  do_all_to_all(in, out);
}
void Communicator::broadcast(TensorView buf, int root) {
  check_broadcast(buf, root);
  count(Collective::kBroadcast, buf, root);
  do_broadcast(buf, root);
}
void Communicator::barrier() {
  do_barrier();
}

WorkPtr Communicator::iall_reduce(TensorView inout) {
  check_reduce("all_reduce", inout);
  count(Collective::kAllReduce, inout);
  return do_iall_reduce(inout);
}
WorkPtr Communicator::ireduce_scatter(TensorView in, TensorView out) {
  check_reduce_scatter(in, out);
  count(Collective::kReduceScatter, in);
  return do_ireduce_scatter(in, out);
}
WorkPtr Communicator::iall_gather(TensorView in, TensorView out, int dim) {
  check_all_gather(in, out, dim);
  count(Collective::kAllGather, out);
  return do_iall_gather(in, out, dim == -1 ? 1 : dim);
}
WorkPtr Communicator::iall_to_all(TensorView in, TensorView out) {
  check_all_to_all(in, out);
  count(Collective::kAllToAll, in);
  return do_iall_to_all(in, out);
}
WorkPtr Communicator::ibroadcast(TensorView buf, int root) {
  check_broadcast(buf, root);
  count(Collective::kBroadcast, buf, root);
  return do_ibroadcast(buf, root);
}

}  // namespace tpl
