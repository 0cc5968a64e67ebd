// A test communicator whose async collectives progress by themselves, as NCCL's do on their
// stream: each runs on a CommWorker thread over the wrapped (MPI) communicator, and
// progresses_async() is true. With it the CPU tests drive the fused ops' async branch
// (src/ops/gemm_collectives.cc), which in the library only the NCCL communicator takes.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "tpl/comm_worker.h"
#include "tpl/communicator.h"

namespace tpl::testing {

class ProgressingCommunicator final : public Communicator {
 public:
  explicit ProgressingCommunicator(std::unique_ptr<Communicator> inner)
      : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return "progressing-" + inner_->name(); }
  bool progresses_async() const override { return true; }
  bool all_true(bool value) override {
    worker_.drain();  // the inner communicator serves one thread at a time
    return inner_->all_true(value);
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    worker_.drain();
    auto sub = inner_->split(color, key);
    return sub ? std::make_unique<ProgressingCommunicator>(std::move(sub)) : nullptr;
  }

 protected:
  void do_barrier() override {
    worker_.drain();
    inner_->barrier();
  }
  void do_all_to_all_v(TensorView in, const std::vector<std::int64_t>& send_counts, TensorView out,
                       const std::vector<std::int64_t>& recv_counts) override {
    worker_.drain();
    inner_->all_to_all_v(in, send_counts, out, recv_counts);
  }
  WorkPtr do_iall_reduce(TensorView t) override {
    return run([this, t] { inner_->all_reduce(t); });
  }
  WorkPtr do_ireduce_scatter(TensorView in, TensorView out) override {
    return run([this, in, out] { inner_->reduce_scatter(in, out); });
  }
  WorkPtr do_iall_gather(TensorView in, TensorView out, int dim) override {
    return run([this, in, out, dim] { inner_->all_gather(in, out, dim); });
  }
  WorkPtr do_iall_to_all(TensorView in, TensorView out) override {
    return run([this, in, out] { inner_->all_to_all(in, out); });
  }
  WorkPtr do_ibroadcast(TensorView buf, int root) override {
    return run([this, buf, root] { inner_->broadcast(buf, root); });
  }

 private:
  class TicketWork final : public Work {
   public:
    TicketWork(CommWorker& w, std::uint64_t t) : worker_(w), ticket_(t) {}
    ~TicketWork() override {
      if (waited_) return;
      try {
        worker_.drain();  // never leave a collective running on freed buffers
      } catch (...) {
        // Destructors must not throw; the failure reaches the next wait() or drain().
      }
    }
    void wait() override {
      waited_ = true;
      worker_.wait(ticket_);
    }
    bool test() override { return worker_.finished(ticket_); }

   private:
    CommWorker& worker_;
    std::uint64_t ticket_;
    bool waited_ = false;
  };
  WorkPtr run(std::function<void()> f) {
    return std::make_unique<TicketWork>(worker_, worker_.submit(std::move(f)));
  }
  std::unique_ptr<Communicator> inner_;
  CommWorker worker_;  // declared last: joins its thread before inner_ goes
};

}  // namespace tpl::testing
