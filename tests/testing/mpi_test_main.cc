// main() for multi-rank GoogleTest programs: MPI is initialised before GoogleTest, only rank 0
// prints the standard report (failures are collective, see harness.h), and the exit code is
// agreed across ranks so mpirun reports a failure if any rank failed.
#include <gtest/gtest.h>

#include <memory>

#include "harness.h"
#include "tpl/backends.h"

namespace tpl::testing {
namespace {
Communicator* g_world = nullptr;  // test-program scope only; the library has no globals
}
Communicator& world() {
  return *g_world;
}
}  // namespace tpl::testing

int main(int argc, char** argv) {
  tpl::MpiSession session(&argc, &argv);
  std::unique_ptr<tpl::Communicator> world = session.world();
  tpl::testing::g_world = world.get();
  ::testing::InitGoogleTest(&argc, argv);
  if (world->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  const bool all_ok = world->all_true(rc == 0);
  world.reset();
  return all_ok ? 0 : 1;
}
