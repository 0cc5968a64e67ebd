#include "tpl/comm_worker.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <string>
#include <thread>

#include "tpl/communicator.h"
#include "tpl/tensor.h"

namespace tpl {

bool worker_has_spare_core(int usable_cores, int gemm_threads) {
  return usable_cores > std::max(1, gemm_threads);
}

bool worker_has_spare_core(Communicator& world) {
  std::array<char, 256> host{};
  if (gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  const std::size_t h = std::hash<std::string>{}(std::string(host.data()));
  Tensor mine(DType::kI32, 1, 2), all(DType::kI32, world.size(), 2);
  mine.ptr<std::int32_t>()[0] = static_cast<std::int32_t>(h & 0x7fffffff);
  mine.ptr<std::int32_t>()[1] = static_cast<std::int32_t>((h >> 32) & 0x7fffffff);
  world.all_gather(mine, all, 0);
  int here = 0;
  for (int r = 0; r < world.size(); ++r)
    here += all.ptr<std::int32_t>()[2 * r] == mine.ptr<std::int32_t>()[0] &&
            all.ptr<std::int32_t>()[2 * r + 1] == mine.ptr<std::int32_t>()[1];
  cpu_set_t set;
  const int affinity = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  const int host_cores = std::max(1u, std::thread::hardware_concurrency());
  const int usable = std::min(affinity, std::max(1, host_cores / std::max(1, here)));
  // Every rank must take the same path: a fused path's chunked collectives do not match an
  // unfused one's single collective.
  return world.all_true(worker_has_spare_core(usable, omp_get_max_threads()));
}

CommWorker::CommWorker() : thread_([this] { loop(); }) {}

CommWorker::~CommWorker() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::uint64_t CommWorker::submit(std::function<void()> task) {
  std::uint64_t ticket;
  {
    std::lock_guard<std::mutex> lk(mu_);
    queue_.push_back(std::move(task));
    ++pending_;
    ticket = submitted_++;
  }
  cv_.notify_all();
  return ticket;
}

void CommWorker::wait(std::uint64_t ticket) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [this, ticket] { return completed_ > ticket || error_; });
  if (error_) {
    cv_.wait(lk, [this] { return pending_ == 0; });  // leave no task running on our buffers
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

bool CommWorker::finished(std::uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  return completed_ > ticket;
}

void CommWorker::drain() {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [this] { return pending_ == 0; });
  if (error_) {
    auto e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
}

void CommWorker::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [this] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and nothing left
    auto task = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    try {
      task();
    } catch (...) {
      lk.lock();
      if (!error_) error_ = std::current_exception();
      lk.unlock();
    }
    lk.lock();
    --pending_;
    ++completed_;
    cv_.notify_all();
  }
}

}  // namespace tpl
