#include "tpl/comm_worker.h"

#include <utility>

namespace tpl {

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
