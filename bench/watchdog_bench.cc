// What watching a collective costs (tpl/watchdog.h): registering and ending one, without and
// with the progress board it publishes to (src/comm/progress_board.h, here over a heap buffer
// standing for the host's shared window). Compare with a 4 KiB all-reduce (about 1 us).
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/progress_board.h"
#include "tpl/watchdog.h"

namespace {

void BM_Watch(benchmark::State& state) {
  const bool with_board = state.range(0) != 0;
  struct alignas(64) Line {
    unsigned char b[64];
  };
  std::vector<Line> mem(tpl::ShmProgressBoard::bytes_for(2) / 64 + 1);
  tpl::ShmProgressBoard::init(mem.data(), 2);
  tpl::ShmProgressBoard board(mem.data(), {0, 1}, 0);
  tpl::Watchdog wd(300, 0, nullptr);
  if (with_board) wd.set_board(&board);
  const std::string name = "mpi group of 2 ranks (world ranks 0, 1)";
  const std::uint64_t key = wd.register_group(name, {0, 1});
  std::uint64_t seq = 0;
  for (auto _ : state) {
    tpl::Watchdog::Scope s = wd.watch("all_reduce", &name, ++seq, 4096, key);
    benchmark::DoNotOptimize(&s);
  }
  wd.set_board(nullptr);
  state.SetLabel(with_board ? "with the progress board" : "recorder only");
}
BENCHMARK(BM_Watch)->Arg(0)->Arg(1);

}  // namespace

BENCHMARK_MAIN();
