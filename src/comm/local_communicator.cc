// Size-1 group: a member's chunk is the whole tensor, so every collective is a copy.
#include "tpl/communicator.h"

namespace tpl {

std::unique_ptr<Communicator> LocalCommunicator::split(int color, int /*key*/) {
  if (color < 0) return nullptr;
  return std::make_unique<LocalCommunicator>();
}

WorkPtr LocalCommunicator::do_iall_reduce(TensorView) {
  return std::make_unique<CompletedWork>();
}

WorkPtr LocalCommunicator::do_ireduce_scatter(TensorView in, TensorView out) {
  copy_into(in, out);
  return std::make_unique<CompletedWork>();
}

WorkPtr LocalCommunicator::do_iall_gather(TensorView in, TensorView out, int) {
  copy_into(in, out);
  return std::make_unique<CompletedWork>();
}

void LocalCommunicator::do_all_to_all_v(TensorView in, const std::vector<std::int64_t>&,
                                        TensorView out, const std::vector<std::int64_t>&) {
  if (in.numel() > 0) copy_into(in.reshape(out.rows(), out.cols()), out);
}

WorkPtr LocalCommunicator::do_iall_to_all(TensorView in, TensorView out) {
  copy_into(in.reshape(out.rows(), out.cols()), out);
  return std::make_unique<CompletedWork>();
}

WorkPtr LocalCommunicator::do_ibroadcast(TensorView, int) {
  return std::make_unique<CompletedWork>();
}

}  // namespace tpl
