// The watchdog (tpl/watchdog.h) on its own, without MPI: the expiry action fires once, after the
// deadline and not before, with a line naming the collective; a timeout of 0 never fires; the
// flight recorder keeps the last kRing collectives with their state; TPL_TIMEOUT is validated.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tpl/error.h"
#include "tpl/watchdog.h"

namespace tpl {
namespace {

using namespace std::chrono_literals;

struct Fired {
  std::mutex mu;
  std::vector<std::string> lines;
  Watchdog::Expiry action() {
    return [this](const std::string& line, const Watchdog&) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(line);
    };
  }
  std::vector<std::string> get() {
    std::lock_guard<std::mutex> lock(mu);
    return lines;
  }
};

const std::string kGroup = "mpi group of 2 ranks (world ranks 0, 1)";

TEST(Watchdog, FiresOnceAfterTheDeadlineNamingTheCollective) {
  Fired fired;
  Watchdog wd(0.3, 1, fired.action());
  {
    Watchdog::Scope s = wd.watch("all_reduce", &kGroup, 7, 4096);
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(fired.get().empty()) << "fired before the deadline";
    std::this_thread::sleep_for(900ms);
  }
  const auto lines = fired.get();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("rank 1: all_reduce #7 on " + kGroup +
                          ", 4096 bytes, has not "
                          "completed after"),
            std::string::npos)
      << lines[0];
  EXPECT_NE(lines[0].find("(deadline 0.3 s"), std::string::npos) << lines[0];
}

TEST(Watchdog, CompletedInTimeOrNoDeadlineNeverFires) {
  Fired fired;
  Watchdog wd(0.3, 0, fired.action());
  for (int i = 0; i < 50; ++i) wd.watch("broadcast", &kGroup, i, 64);  // each ends at once
  {
    Watchdog::Scope s = wd.watch("all_gather", &kGroup, 51, 64);
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(400ms);
  EXPECT_TRUE(fired.get().empty());
  wd.set_timeout(0);
  {
    Watchdog::Scope s = wd.watch("all_gather", &kGroup, 52, 64);
    std::this_thread::sleep_for(500ms);
  }
  EXPECT_TRUE(fired.get().empty()) << "timeout 0 means no deadline";
}

TEST(Watchdog, SuspensionLiftsTheDeadlineUntilItEnds) {
  Fired fired;
  Watchdog wd(0.2, 0, fired.action());
  {
    Watchdog::Suspension long_wait(&wd);
    EXPECT_EQ(wd.timeout(), 0);
    Watchdog::Scope s = wd.watch("all_true", &kGroup, 1, 4);
    std::this_thread::sleep_for(500ms);
  }
  EXPECT_TRUE(fired.get().empty());
  EXPECT_EQ(wd.timeout(), 0.2);
  Watchdog::Suspension none(nullptr);  // a communicator without a watchdog
}

TEST(Watchdog, AScopeMovedIntoAsyncWorkStaysInFlight) {
  Fired fired;
  Watchdog wd(0.2, 0, fired.action());
  Watchdog::Scope outer;
  {
    Watchdog::Scope posted = wd.watch("iall_reduce", &kGroup, 1, 8);
    outer = std::move(posted);  // the Work owns it now; the posting call has returned
  }
  std::this_thread::sleep_for(600ms);
  outer.end();
  ASSERT_EQ(fired.get().size(), 1u);
  EXPECT_NE(fired.get()[0].find("iall_reduce #1"), std::string::npos);
}

TEST(Watchdog, FlightRecorderKeepsTheLastCollectivesWithTheirState) {
  Watchdog wd(0, 2, nullptr);
  for (int i = 1; i <= 100; ++i) wd.watch("all_reduce", &kGroup, i, i);
  Watchdog::Scope open = wd.watch("reduce_scatter", &kGroup, 101, 512);
  const auto r = wd.records();
  ASSERT_EQ(r.size(), Watchdog::kRing);
  EXPECT_EQ(r.front().seq, 101 - Watchdog::kRing + 1);
  EXPECT_TRUE(r.front().completed);
  EXPECT_EQ(r.back().op, "reduce_scatter");
  EXPECT_EQ(r.back().bytes, 512);
  EXPECT_FALSE(r.back().completed);
  const nlohmann::json j = nlohmann::json::parse(wd.dump_json());
  EXPECT_EQ(j["rank"], 2);
  ASSERT_EQ(j["records"].size(), Watchdog::kRing);
  EXPECT_EQ(j["records"].back()["state"], "started");
  EXPECT_EQ(j["records"].back()["group"], kGroup);
}

// watch_until(): what NCCL's communicator uses (the call returns before the GPU is done). A fake
// completion test stands in for cudaEventQuery.
TEST(Watchdog, PolledCollectivesRetireWhenTheirTestSaysDone) {
  Fired fired;
  Watchdog wd(5, 0, fired.action());
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::atomic<int> aborted{0};
  wd.watch_until(
      "all_reduce", &kGroup, 1, 256, 0, [done] { return done->load(); }, [&] { ++aborted; });
  wd.watch_until("broadcast", &kGroup, 2, 8, 0, [] { return true; });
  wd.watch_until("all_gather", &kGroup, 3, 8, 0, []() -> bool { throw std::runtime_error("x"); });
  EXPECT_EQ(wd.poll(), 1u) << "only the all-reduce is still in flight";
  auto r = wd.records();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_FALSE(r[0].completed);
  EXPECT_TRUE(r[1].completed);
  EXPECT_TRUE(r[2].completed) << "a failed test retires its entry";
  EXPECT_EQ(done.use_count(), 2) << "the test is kept while in flight";
  done->store(true);
  std::this_thread::sleep_for(300ms);  // the watchdog's own tick retires it
  EXPECT_TRUE(wd.records()[0].completed);
  EXPECT_EQ(done.use_count(), 1) << "a retired entry drops its test (and what it holds)";
  EXPECT_EQ(wd.poll(), 0u);
  EXPECT_EQ(aborted, 0);
  EXPECT_TRUE(fired.get().empty());
  EXPECT_THROW(wd.watch_until("x", &kGroup, 4, 1, 0, nullptr), InvalidArgument);
}

TEST(Watchdog, APolledCollectivePastItsDeadlineRunsItsHookThenTheAction) {
  std::vector<std::string> order;
  std::mutex mu;
  Watchdog wd(0.3, 3, [&](const std::string& line, const Watchdog&) {
    std::lock_guard<std::mutex> lock(mu);
    order.push_back("action: " + line);
  });
  std::atomic<bool> done{false};
  wd.watch_until(
      "reduce_scatter", &kGroup, 9, 1024, 0, [&] { return done.load(); },
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back("hook");
        done = true;  // as ncclCommAbort makes the stuck kernel return
      });
  std::this_thread::sleep_for(150ms);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(order.empty()) << "fired before the deadline";
  }
  std::this_thread::sleep_for(900ms);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(order.size(), 2u) << "the hook and the action, once each";
  EXPECT_EQ(order[0], "hook");
  EXPECT_NE(order[1].find("action: rank 3: reduce_scatter #9 on " + kGroup +
                          ", 1024 bytes, has not completed after"),
            std::string::npos)
      << order[1];
  EXPECT_TRUE(wd.records()[0].completed) << "retired once the hook made it return";
}

TEST(Watchdog, AFailingHookIsNamedInTheLine) {
  Fired fired;
  Watchdog wd(0.2, 0, fired.action());
  wd.watch_until(
      "all_to_all", &kGroup, 1, 64, 0, [] { return false; },
      [] { throw std::runtime_error("ncclCommAbort failed: unhandled cuda error"); });
  std::this_thread::sleep_for(700ms);
  const auto lines = fired.get();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("all_to_all #1"), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("aborting the collective failed too: ncclCommAbort failed"),
            std::string::npos)
      << lines[0];
}

// Posting threads, completing threads, the watchdog's tick and poll() at once (also run under
// ThreadSanitizer: tsan.Watchdog.*).
TEST(Watchdog, PolledCollectivesFromManyThreads) {
  Fired fired;
  Watchdog wd(30, 0, fired.action());
  constexpr int kThreads = 4, kEach = 200;
  std::vector<std::shared_ptr<std::atomic<bool>>> flags;
  for (int i = 0; i < kThreads * kEach; ++i) flags.push_back(std::make_shared<std::atomic<bool>>());
  std::vector<std::thread> posters, finishers;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto f = flags[static_cast<std::size_t>(t * kEach + i)];
        wd.watch_until("all_reduce", &kGroup, static_cast<std::uint64_t>(i + 1), 4, 0,
                       [f] { return f->load(); });
        if (i % 16 == 0) wd.poll();
      }
    });
    finishers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) flags[static_cast<std::size_t>(t * kEach + i)]->store(true);
    });
  }
  for (auto& th : posters) th.join();
  for (auto& th : finishers) th.join();
  EXPECT_EQ(wd.poll(), 0u);
  for (const auto& r : wd.records()) EXPECT_TRUE(r.completed) << r.seq;
  EXPECT_TRUE(fired.get().empty());
}

TEST(Watchdog, TimeoutSettingIsValidated) {
  ::unsetenv("TPL_TIMEOUT");
  EXPECT_EQ(Watchdog::timeout_from_env(300), 300);
  ::setenv("TPL_TIMEOUT", "2.5", 1);
  EXPECT_EQ(Watchdog::timeout_from_env(300), 2.5);
  ::setenv("TPL_TIMEOUT", "0", 1);
  EXPECT_EQ(Watchdog::timeout_from_env(300), 0);
  for (const char* bad : {"-1", "soon", "5s", "nan"}) {
    ::setenv("TPL_TIMEOUT", bad, 1);
    EXPECT_THROW(Watchdog::timeout_from_env(300), ConfigError) << bad;
  }
  ::unsetenv("TPL_TIMEOUT");
}

}  // namespace
}  // namespace tpl
