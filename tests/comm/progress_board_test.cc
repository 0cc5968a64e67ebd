// The progress board (src/comm/progress_board.h) and `tplinear analyze`
// (tpl/flight_analysis.h) without MPI: several boards over one heap buffer stand for the ranks
// of a host, and watchdogs with such boards stand for their processes. The expiry line must
// name who never joined, who joined and did not finish, and who is on another host; a dump
// request must reach every rank; the analysis of merged recorders must name the first
// collective the ranks disagree on, and refuse what is not a recorder.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "comm/progress_board.h"
#include "tpl/error.h"
#include "tpl/flight_analysis.h"
#include "tpl/watchdog.h"

namespace tpl {
namespace {

using namespace std::chrono_literals;

// A host of `rows` ranks with world ranks `ranks`: one board per rank over one buffer.
struct Host {
  explicit Host(std::vector<int> ranks)
      : mem(ShmProgressBoard::bytes_for(static_cast<int>(ranks.size())) / 64 + 1) {
    ShmProgressBoard::init(mem.data(), static_cast<int>(ranks.size()));
    for (int r = 0; r < static_cast<int>(ranks.size()); ++r)
      boards.push_back(std::make_unique<ShmProgressBoard>(mem.data(), ranks, r));
  }
  struct alignas(64) Line {
    unsigned char b[64];
  };
  std::vector<Line> mem;
  std::vector<std::unique_ptr<ShmProgressBoard>> boards;
};

constexpr std::uint64_t kTp = 11, kWorld = 22;

TEST(ProgressBoard, NamesWhoNeverJoinedWhoIsWaitingAndWhoIsElsewhere) {
  Host host({0, 1, 2});
  for (std::uint64_t n = 1; n <= 6; ++n)
    for (auto& b : host.boards) {
      b->joined(kTp, n, "all_reduce");
      b->completed(kTp, n);
    }
  host.boards[0]->joined(kTp, 7, "all_reduce");  // ranks 0 and 2 wait in #7
  host.boards[2]->joined(kTp, 7, "all_reduce");
  host.boards[1]->joined(kWorld, 3, "all_gather");  // rank 1 is elsewhere, in flight
  const std::string r = host.boards[0]->report(kTp, 7, {0, 1, 2, 5});
  EXPECT_EQ(r,
            "never joined: rank 1 (at #6 of this group; last: all_gather #3 of another group, in "
            "flight); joined, not finished: ranks 0, 2; on another host, not known: rank 5")
      << r;
  // Every rank reads the same board: rank 2's view is rank 0's.
  EXPECT_EQ(host.boards[2]->report(kTp, 7, {0, 1, 2, 5}), r);
  host.boards[1]->completed(kWorld, 3);
  host.boards[1]->joined(kTp, 7, "all_reduce");
  host.boards[1]->completed(kTp, 7);
  EXPECT_EQ(host.boards[0]->report(kTp, 7, {0, 1, 2}),
            "joined, not finished: ranks 0, 2; finished: rank 1");
  // A rank that never used the group at all.
  EXPECT_EQ(host.boards[0]->report(kWorld, 1, {0, 1}),
            "never joined: rank 0 (at #0 of this group; last: all_reduce #7 of another group, in "
            "flight); finished: rank 1");
}

TEST(ProgressBoard, AFullRowSaysNotKnownInsteadOfNeverJoined) {
  Host host({0, 1});
  for (std::uint64_t key = 100; key < 100 + ShmProgressBoard::kSlots + 3; ++key) {
    host.boards[1]->joined(key, 1, "split");
    host.boards[1]->completed(key, 1);
  }
  const std::uint64_t late = 100 + ShmProgressBoard::kSlots + 1;  // one it could not publish
  host.boards[0]->joined(late, 1, "split");
  EXPECT_EQ(host.boards[0]->report(late, 1, {0, 1}),
            "joined, not finished: rank 0; not known (progress board full): rank 1");
}

TEST(ProgressBoard, AForgottenGroupKeepsItsStateUntilItsSlotIsNeeded) {
  Host host({0, 1});
  for (std::uint64_t key = 100; key < 100 + ShmProgressBoard::kSlots; ++key) {
    host.boards[1]->joined(key, 1, "split");
    host.boards[1]->completed(key, 1);
  }
  host.boards[1]->forget(100);
  host.boards[1]->forget(101);
  EXPECT_EQ(host.boards[0]->report(100, 1, {1}), "finished: rank 1") << "still readable";
  host.boards[1]->joined(500, 3, "all_gather");  // takes 100's slot, the longest forgotten
  EXPECT_EQ(host.boards[0]->report(500, 3, {1}), "joined, not finished: rank 1");
  EXPECT_EQ(host.boards[0]->report(101, 1, {1}), "finished: rank 1");
  EXPECT_NE(host.boards[0]->report(100, 1, {1}).find("not known"), std::string::npos);
}

TEST(ProgressBoard, WatchdogGroupsStayBoundedAsCommunicatorsComeAndGo) {
  Watchdog wd(0, 0, nullptr);
  const std::string name = "mpi group of 2 ranks (world ranks 0, 1)";
  std::uint64_t first = 0;
  for (int i = 0; i < 1000; ++i) {
    const std::uint64_t k = wd.register_group(name, {0, 1});
    if (i == 0) first = k;
    EXPECT_NE(k, 0u);
    if (i > 0) EXPECT_NE(k, first);
    wd.unregister_group(k);
  }
  const nlohmann::json j = nlohmann::json::parse(wd.dump_json());
  EXPECT_EQ(j["groups"].size(), Watchdog::kKeptGroups);
  // Keys never repeat: the 1001st group of that name is a new key.
  EXPECT_NE(wd.register_group(name, {0, 1}), first);
}

TEST(ProgressBoard, TheLastJoinedRecordIsNeverReadTorn) {
  // One writer alternates between two collectives whose fields differ in every word; a reader
  // must only ever see one of them whole. (Also run under TSan with the SHM core's suite.)
  Host host({0, 1});
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (std::uint64_t i = 1; !stop.load(); ++i) {
      if (i % 2)
        host.boards[1]->joined(kWorld, i, "all_gather");
      else
        host.boards[1]->joined(kWorld + 1, i, "reduce_scatter");
    }
  });
  int seen = 0;
  std::string bad;  // the first torn reading (asserted once the writer has stopped)
  for (int i = 0; i < 20000 && bad.empty(); ++i) {
    const std::string r = host.boards[0]->report(kTp, 1, {1});
    const auto last = r.find("last: ");
    if (last == std::string::npos) continue;
    const bool gather = r.find("all_gather #") != std::string::npos;
    const bool scatter = r.find("reduce_scatter #") != std::string::npos;
    const std::uint64_t seq = std::stoull(r.substr(r.find('#', last) + 1));
    const bool other = r.find("of another group") != std::string::npos;
    if (gather == scatter || seq % 2 != (gather ? 1u : 0u) || !other) bad = r;
    ++seen;
  }
  stop = true;
  writer.join();
  EXPECT_EQ(bad, "") << "torn";
  EXPECT_GT(seen, 0);
}

TEST(ProgressBoard, ADumpRequestReachesEveryRankAndIsAcknowledged) {
  Host host({4, 5, 6});
  EXPECT_EQ(host.boards[1]->pending_dump(0), 0u);
  const std::uint64_t req = host.boards[0]->request_dumps();
  EXPECT_EQ(host.boards[1]->pending_dump(0), req);
  EXPECT_EQ(host.boards[2]->pending_dump(req), 0u) << "already answered";
  host.boards[1]->dumped(req);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(host.boards[0]->await_dumps(req, 0.2), std::vector<int>{6});
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 200ms);
  host.boards[2]->dumped(req);
  EXPECT_TRUE(host.boards[0]->await_dumps(req, 5).empty());
  // Two ranks that time out together each wait for the other: both must get through.
  const std::uint64_t a = host.boards[0]->request_dumps();
  const std::uint64_t b = host.boards[1]->request_dumps();
  host.boards[2]->dumped(b);
  std::vector<int> left0, left1;
  std::thread t([&] { left1 = host.boards[1]->await_dumps(b, 5); });
  left0 = host.boards[0]->await_dumps(a, 5);
  t.join();
  EXPECT_TRUE(left0.empty());
  EXPECT_TRUE(left1.empty());
}

struct Fired {
  std::mutex mu;
  std::vector<std::string> lines;
  Watchdog::Expiry action() {
    return [this](const std::string& line, const Watchdog&) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(line);
    };
  }
};

TEST(ProgressBoard, TheWatchdogPublishesAndItsExpiryLineNamesTheMissingRank) {
  Host host({0, 1});
  Fired fired;
  Watchdog w0(0.3, 0, fired.action()), w1(0, 1, nullptr);
  w0.set_board(host.boards[0].get());
  w1.set_board(host.boards[1].get());
  const std::string name = "mpi group of 2 ranks (world ranks 0, 1)";
  const std::uint64_t k0 = w0.register_group(name, {0, 1});
  const std::uint64_t k1 = w1.register_group(name, {0, 1});
  EXPECT_EQ(k0, k1) << "the same group must have the same key on every member";
  EXPECT_NE(w0.register_group(name, {0, 1}), k0) << "a second group over the same ranks";
  for (std::uint64_t n = 1; n <= 4; ++n) {
    w0.watch("broadcast", &name, n, 64, k0);
    w1.watch("broadcast", &name, n, 64, k1);
  }
  {
    Watchdog::Scope s = w0.watch("all_reduce", &name, 5, 4096, k0);  // rank 1 never comes
    std::this_thread::sleep_for(700ms);
  }
  std::lock_guard<std::mutex> lock(fired.mu);
  ASSERT_EQ(fired.lines.size(), 1u);
  EXPECT_NE(fired.lines[0].find("all_reduce #5 on " + name), std::string::npos) << fired.lines[0];
  EXPECT_NE(fired.lines[0].find("; never joined: rank 1 (at #4 of this group; last: broadcast #4 "
                                "of this group, completed); joined, not finished: rank 0"),
            std::string::npos)
      << fired.lines[0];
  w0.set_board(nullptr);
  w1.set_board(nullptr);
}

TEST(ProgressBoard, ADumpRequestMakesEveryWatchdogWriteItsRecorder) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("tpl_board_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Host host({0, 1, 2});
  std::vector<std::unique_ptr<Watchdog>> wds;
  for (int r = 0; r < 3; ++r) {
    wds.push_back(std::make_unique<Watchdog>(0, r, nullptr));  // no deadline: still answers
    wds.back()->set_dump_dir(dir.string());
    wds.back()->set_board(host.boards[static_cast<std::size_t>(r)].get());
  }
  const std::string name = "g";
  for (auto& w : wds) w->watch("barrier", &name, 1, 0, w->register_group(name, {0, 1, 2}));
  const std::uint64_t req = host.boards[0]->request_dumps();
  EXPECT_TRUE(host.boards[0]->await_dumps(req, 5).empty());
  for (int r = 1; r < 3; ++r) {
    const auto path = dir / ("tplinear-flight-rank" + std::to_string(r) + ".json");
    ASSERT_TRUE(std::filesystem::exists(path)) << path;
  }
  for (auto& w : wds) w->set_board(nullptr);
  std::filesystem::remove_all(dir);
}

// ---- tplinear analyze ----

// A recorder as Watchdog::dump_json writes it, built by hand.
struct DumpBuilder {
  int rank;
  std::uint64_t recorded = 0;
  nlohmann::json records = nlohmann::json::array();
  DumpBuilder& rec(std::uint64_t key, std::uint64_t gseq, const std::string& op, bool done,
                   double t, std::int64_t bytes = 64) {
    records.push_back({{"seq", ++recorded},
                       {"group_seq", gseq},
                       {"group_key", key},
                       {"op", op},
                       {"group", key == kTp ? "tp" : "world"},
                       {"bytes", bytes},
                       {"state", done ? "completed" : "started"},
                       {"started_s", t},
                       {"elapsed_s", 0.001}});
    return *this;
  }
  FlightDump dump(std::uint64_t ring = 64) const {
    nlohmann::json groups =
        nlohmann::json::array({{{"key", kTp},
                                {"name", "mpi group of 2 ranks (world ranks 0, 1)"},
                                {"world_ranks", {0, 1}}},
                               {{"key", kWorld},
                                {"name", "mpi group of 3 ranks (world ranks 0, 1, 2)"},
                                {"world_ranks", {0, 1, 2}}}});
    nlohmann::json j{{"rank", rank},      {"host", "h"},       {"timeout_s", 2},
                     {"wall_t0", 1000.0}, {"ring", ring},      {"recorded", recorded},
                     {"groups", groups},  {"records", records}};
    return {"rank" + std::to_string(rank) + ".json", j.dump()};
  }
};

TEST(FlightAnalysis, NamesTheFirstCollectiveAndWhoNeverJoinedIt) {
  DumpBuilder r0{0}, r1{1}, r2{2};
  r0.rec(kWorld, 1, "split", true, 0.1).rec(kTp, 1, "all_reduce", true, 0.2);
  r1.rec(kWorld, 1, "split", true, 0.1).rec(kTp, 1, "all_reduce", true, 0.2);
  r2.rec(kWorld, 1, "split", true, 0.1);
  r0.rec(kWorld, 2, "all_gather", false, 0.3);  // rank 2 never joins world #2
  r1.rec(kWorld, 2, "all_gather", false, 0.31);
  r0.rec(kTp, 2, "all_reduce", false, 0.4);  // later trouble, not the first
  const std::string out = analyze_flight_dumps({r0.dump(), r1.dump(), r2.dump()});
  EXPECT_NE(out.find("flight recorders of world ranks 0, 1, 2 (host h)\n"), std::string::npos)
      << out;
  EXPECT_NE(out.find("first collective the ranks disagree on: all_gather #2 on mpi group of 3 "
                     "ranks (world ranks 0, 1, 2), 64 bytes\n"
                     "  joined, not finished: ranks 0, 1\n"
                     "  never joined: rank 2 (its last on this group: #1 split, completed)\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("(1 later collective did not complete on every member either)"),
            std::string::npos)
      << out;
  // Without rank 2's recorder: it is named as missing, not as never joined.
  const std::string two = analyze_flight_dumps({r0.dump(), r1.dump()});
  EXPECT_NE(two.find("  no flight recorder (stopped, killed, or on a host that was not asked): "
                     "rank 2\n"),
            std::string::npos)
      << two;
}

TEST(FlightAnalysis, RanksThatDisagreeOnWhatACollectiveIsAreNamed) {
  DumpBuilder r0{0}, r1{1};
  r0.rec(kTp, 1, "all_reduce", false, 0.1, 4096);
  r1.rec(kTp, 1, "all_gather", false, 0.1, 2048);
  const std::string out = analyze_flight_dumps({r0.dump(), r1.dump()});
  EXPECT_NE(out.find("first collective the ranks disagree on: #1 on mpi group of 2 ranks"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  the ranks that joined it disagree on what it is: all_gather (2048 bytes) "
                     "on rank 1; all_reduce (4096 bytes) on rank 0\n"),
            std::string::npos)
      << out;
}

TEST(FlightAnalysis, AllCompletedIsNoDisagreementAndAWrappedRingIsNotKnown) {
  DumpBuilder r0{0}, r1{1};
  r0.rec(kTp, 1, "all_reduce", true, 0.1);
  r1.rec(kTp, 1, "all_reduce", true, 0.1);
  EXPECT_NE(analyze_flight_dumps({r0.dump(), r1.dump()}).find("no disagreement"),
            std::string::npos);
  // Rank 1's ring wrapped and its oldest record is newer than tp #2: it cannot say.
  DumpBuilder a{0}, b{1};
  a.rec(kTp, 2, "all_reduce", false, 0.1);
  b.rec(kWorld, 9, "barrier", true, 0.5);
  b.recorded = 100;
  const std::string out = analyze_flight_dumps({a.dump(), b.dump()});
  EXPECT_NE(out.find("  not known (their records no longer reach back to it): rank 1"),
            std::string::npos)
      << out;
  // A rank past it on the same group joined it, though the record aged out.
  DumpBuilder c{1};
  c.rec(kTp, 5, "all_reduce", true, 0.9);
  c.recorded = 100;
  EXPECT_NE(analyze_flight_dumps({a.dump(), c.dump()}).find("  completed: rank 1"),
            std::string::npos);
}

TEST(FlightAnalysis, WhatIsNotARecorderIsAConfigErrorNamingTheFile) {
  DumpBuilder r0{0};
  r0.rec(kTp, 1, "all_reduce", true, 0.1);
  auto message = [](const std::vector<FlightDump>& d) {
    try {
      analyze_flight_dumps(d);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no ConfigError");
  };
  EXPECT_NE(message({{"x.json", "{not json"}}).find("x.json"), std::string::npos);
  EXPECT_NE(message({{"y.json", "[1, 2]"}}).find("not a JSON object"), std::string::npos);
  EXPECT_NE(message({{"z.json", R"({"rank": 0})"}}).find("field 'wall_t0'"), std::string::npos);
  EXPECT_NE(message({r0.dump(), r0.dump()}).find("a second flight recorder of world rank 0"),
            std::string::npos);
  EXPECT_NE(message({}).find("no flight recorders given"), std::string::npos);
  // Out-of-range numbers are refused before any conversion (the fuzz corpus's crashes/flight).
  EXPECT_NE(message({{"r.json", R"({"rank": 1e300})"}}).find("field 'rank' must be a rank"),
            std::string::npos);
  FlightDump neg = r0.dump();
  neg.text.replace(neg.text.find("[0,1]"), 5, "[0,-3]");
  EXPECT_NE(message({neg}).find("field 'world_ranks' must be a rank"), std::string::npos)
      << message({neg});
  FlightDump bad = r0.dump();
  bad.text.replace(bad.text.find("\"completed\""), 11, "\"lost\"");
  EXPECT_NE(message({bad}).find("state 'lost'"), std::string::npos);
}

// A real recorder, written by the watchdog, goes through the analysis.
TEST(FlightAnalysis, ReadsWhatTheWatchdogWrites) {
  Watchdog w0(0, 0, nullptr), w1(0, 1, nullptr);
  const std::string name = "mpi group of 2 ranks (world ranks 0, 1)";
  const auto k0 = w0.register_group(name, {0, 1}), k1 = w1.register_group(name, {0, 1});
  w0.watch("barrier", &name, 1, 0, k0);
  w1.watch("barrier", &name, 1, 0, k1);
  Watchdog::Scope open = w0.watch("all_reduce", &name, 2, 128, k0);
  const std::string out = analyze_flight_dumps({{"a", w0.dump_json()}, {"b", w1.dump_json()}});
  EXPECT_NE(out.find("first collective the ranks disagree on: all_reduce #2 on " + name +
                     ", 128 bytes\n  joined, not finished: rank 0\n  never joined: rank 1 (its "
                     "last on this group: #1 barrier, completed)\n"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace tpl
