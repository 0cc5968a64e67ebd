// The watchdog (tpl/watchdog.h) on its own, without MPI: the expiry action fires once, after the
// deadline and not before, with a line naming the collective; a timeout of 0 never fires; the
// flight recorder keeps the last kRing collectives with their state; TPL_TIMEOUT is validated.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
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
