"""A fault test (tests/cli/fault.sh): a World attached to mpi4py's MPI, one rank stalled before
its n-th collective (TPL_FAULT_STALL), a loop of barriers. The other rank's deadline must end
the job; with --board (World's progress_board=True) its message names the rank that never
joined. Other arguments only mark the processes for fault.sh."""
import sys

import tplinear

board = "--board" in sys.argv
world = tplinear.world(progress_board=board)
if world.progress_board != board:
    print(f"FAIL: rank {world.rank}: progress_board is {world.progress_board}", flush=True)
    sys.exit(1)
for _ in range(100):
    world.barrier()
print(f"FAIL: rank {world.rank}: 100 barriers passed, nobody stalled", flush=True)
sys.exit(1)
