// The tplinear command. main() owns MPI (MpiSession) and is the only place that turns errors
// into exit codes.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "demo.h"
#include "tpl/backends.h"
#include "tpl/error.h"

int main(int argc, char** argv) {
  tpl::MpiSession session(&argc, &argv);
  auto world = session.world();
  CLI::App app{"tplinear: tensor-parallel linear layers across MPI ranks"};
  app.require_subcommand(1);
  tpl::cli::DemoOptions demo;
  auto* d = app.add_subcommand("demo", "column + row parallel MLP block, checked against 1 rank");
  d->add_option("--tokens", demo.tokens, "tokens in the batch")->check(CLI::Range(1, 1 << 24));
  d->add_option("--hidden", demo.hidden, "hidden size")->check(CLI::Range(1, 1 << 16));
  d->add_option("--intermediate", demo.intermediate, "MLP intermediate size")
      ->check(CLI::Range(1, 1 << 18));
  d->add_option("--dtype", demo.dtype, "f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  d->add_option("--strategy", demo.strategy, "standard, fc1 or matmul-allreduce")
      ->check(CLI::IsMember({"standard", "fc1", "matmul-allreduce"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rank = world->rank();
    world.reset();
    return rank == 0 ? app.exit(e) : e.get_exit_code();  // one copy of the usage text
  }
  int rc = 0;
  try {
    if (*d) rc = tpl::cli::run_demo(*world, demo);
  } catch (const tpl::Error& e) {
    std::fprintf(stderr, "tplinear: error: %s\n", e.what());
    rc = 2;
  }
  world.reset();
  return rc;
}
