"""tplinear: tensor-parallel linear layers over MPI, from Python (docs/python.md).

    from mpi4py import MPI
    import tplinear
    world = tplinear.World.from_mpi4py(MPI.COMM_WORLD)
    env = tplinear.Env(world, tplinear.Config({"tp": world.size}))
    up = tplinear.LinearLayer(env, "model.layers.0.mlp.up_proj", "column", w_up)
    y = up.forward(x)          # numpy in, numpy out; torch in, torch out

mpi4py owns MPI here: importing this module imports mpi4py.MPI, which initialises MPI (thread
level MULTIPLE) and finalises it at exit.
"""
from mpi4py import MPI as _MPI  # initialise MPI before any World attaches to it

from ._tplinear import (  # noqa: F401
    BackendError,
    CommError,
    Config,
    ConfigError,
    DecoderStack,
    Env,
    Error,
    InvalidArgument,
    IoError,
    LinearLayer,
    OutOfMemory,
    Plan,
    Unsupported,
    World as _World,
    _data_ptr,
    built_backends,
    explain,
    mpi_library_version,
    plan,
)

World = _World


def world(comm=None, progress_board=False):
    """The world over `comm` (an mpi4py communicator; default COMM_WORLD).

    progress_board=True (collective over COMM_WORLD) lets a deadline's message name the ranks
    that never joined the stuck collective; the World must then be dropped at the same point on
    every rank (docs/python.md)."""
    return World.from_mpi4py(comm if comm is not None else _MPI.COMM_WORLD,
                             progress_board=progress_board)


__all__ = [
    "BackendError", "CommError", "Config", "ConfigError", "DecoderStack", "Env", "Error",
    "InvalidArgument", "IoError", "LinearLayer", "OutOfMemory", "Plan", "Unsupported", "World",
    "built_backends", "explain", "mpi_library_version", "plan", "world",
]
