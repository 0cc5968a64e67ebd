# Environment for running OpenMPI jobs as root on a small machine (platform-notes §2.1).
# Source it: `. scripts/env.sh`.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1   # more ranks than cores
export OMPI_MCA_btl=self,vader               # shared memory only
export OMPI_MCA_oob_tcp_if_include=lo        # launcher traffic on loopback
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} # one oneDNN thread per rank
