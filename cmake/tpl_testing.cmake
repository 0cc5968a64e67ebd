# CI runs the GEMM, op and CLI tests twice: natively, and with the ISA capped at AVX2
# (TPL_CPU_ISA caps tplinear's GEMM choice and oneDNN; OPENBLAS_CORETYPE caps OpenBLAS), so the
# AVX2 paths are tested on AVX-512 machines too. The capped entries are named *_avx2. On a CPU
# without AVX-512 the native run already is the AVX2 run, so AUTO registers them only where
# /proc/cpuinfo lists avx512f.
set(TPL_TEST_CAPPED_ISA AUTO CACHE STRING "Register the *_avx2 test entries (AUTO, ON, OFF)")
set(TPL_CAPPED_ENV "TPL_CPU_ISA=avx2;OPENBLAS_CORETYPE=Haswell")
set(TPL_WITH_CAPPED_TESTS OFF)
if(TPL_TEST_CAPPED_ISA STREQUAL "ON")
  set(TPL_WITH_CAPPED_TESTS ON)
elseif(TPL_TEST_CAPPED_ISA STREQUAL "AUTO" AND EXISTS /proc/cpuinfo)
  file(STRINGS /proc/cpuinfo _tpl_flags REGEX "^flags" LIMIT_COUNT 1)
  if(_tpl_flags MATCHES " avx512f ")
    set(TPL_WITH_CAPPED_TESTS ON)
  endif()
endif()
message(STATUS "tplinear: AVX2-capped test entries ${TPL_WITH_CAPPED_TESTS}")

# The AVX-512 levels (TPL_CPU_ISA values) strictly below this host's own: on an AMX Xeon,
# avx512_core (Skylake-X: int8 without VNNI), avx512_core_vnni (Ice Lake) and avx512_core_bf16
# (Zen 4/5). tests/gemm and tests/cli run a few checks capped at each, so the paths of CPUs
# below this one are tested here too. Detected as src/cpu/cpu_isa.cc does, from the flags.
set(TPL_TEST_LOWER_ISAS "")
if(TPL_WITH_CAPPED_TESTS AND _tpl_flags MATCHES " avx512f " AND _tpl_flags MATCHES " avx512bw "
   AND _tpl_flags MATCHES " avx512vl " AND _tpl_flags MATCHES " avx512dq ")
  set(_tpl_levels avx512_core)
  if(_tpl_flags MATCHES " avx512_vnni ")
    list(APPEND _tpl_levels avx512_core_vnni)
    if(_tpl_flags MATCHES " avx512_bf16 ")
      list(APPEND _tpl_levels avx512_core_bf16)
      if(_tpl_flags MATCHES " amx_tile " AND _tpl_flags MATCHES " amx_int8 "
         AND _tpl_flags MATCHES " amx_bf16 ")
        list(APPEND _tpl_levels avx512_core_amx)
      endif()
    endif()
  endif()
  list(POP_BACK _tpl_levels)  # the host's own level is the native run
  set(TPL_TEST_LOWER_ISAS ${_tpl_levels})
endif()
message(STATUS "tplinear: AVX-512 levels tested capped below this CPU's: ${TPL_TEST_LOWER_ISAS}")

# tpl_add_mpi_test(<name> <target> NPROCS n1 n2 ... [TIMEOUT s] [CAPPED])
# Registers one CTest entry per rank count, each running the target under mpirun with the
# environment root and oversubscription need on a 2-core machine (platform-notes §2.1, §2.7).
# CAPPED adds <name>_avx2_np<n> entries under TPL_CAPPED_ENV (see above).
# The plain entries pin TPL_COMM=mpi (the default, auto, would pick SHM at 2 ranks on a 2-CPU
# machine and MPI above, so what they test would depend on the machine); the *_shm entries set
# shm, and CLI tests that name TPL_COMM=auto test the automatic choice.
set(TPL_MPI_TEST_BASE_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_btl=self,vader;OMPI_MCA_oob_tcp_if_include=lo;OMPI_MCA_rmaps_base_oversubscribe=1;OMP_NUM_THREADS=1")
set(TPL_MPI_TEST_ENV "${TPL_MPI_TEST_BASE_ENV};TPL_COMM=mpi")
function(tpl_add_mpi_test name target)
  cmake_parse_arguments(ARG "CAPPED;SHM" "TIMEOUT;HIER" "NPROCS;ARGS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  foreach(np IN LISTS ARG_NPROCS)
    add_test(NAME ${name}_np${np}
             COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                     --bind-to none ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}>
                     ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
    set_tests_properties(${name}_np${np} PROPERTIES ENVIRONMENT "${TPL_MPI_TEST_ENV}"
                         TIMEOUT ${ARG_TIMEOUT} LABELS mpi PROCESSORS 2)
    # SHM: the same program with every communicator on shared memory (TPL_COMM=shm).
    if(ARG_SHM)
      add_test(NAME ${name}_shm_np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                       --bind-to none ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}>
                       ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
      set_tests_properties(${name}_shm_np${np} PROPERTIES
                           ENVIRONMENT "${TPL_MPI_TEST_BASE_ENV};TPL_COMM=shm"
                           TIMEOUT ${ARG_TIMEOUT} LABELS "mpi;shm" PROCESSORS 2)
    endif()
    # Hierarchical: this host cut into two "nodes" (TPL_NODE_SPLIT=2), so groups of 2+ ranks
    # span them; HIER names the world's TPL_COMM (shm: the world is shm+mpi; mpi: the program
    # builds its own SHM communicators over an MPI world).
    if(ARG_HIER AND np GREATER 1)
      add_test(NAME ${name}_hier_np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                       --bind-to none ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}>
                       ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
      set_tests_properties(${name}_hier_np${np} PROPERTIES
                           ENVIRONMENT
                           "${TPL_MPI_TEST_BASE_ENV};TPL_COMM=${ARG_HIER};TPL_NODE_SPLIT=2"
                           TIMEOUT ${ARG_TIMEOUT} LABELS "mpi;shm;hier" PROCESSORS 2)
    endif()
    if(ARG_CAPPED AND TPL_WITH_CAPPED_TESTS)
      add_test(NAME ${name}_avx2_np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} ${np} --oversubscribe
                       --bind-to none ${MPIEXEC_PREFLAGS} $<TARGET_FILE:${target}>
                       ${MPIEXEC_POSTFLAGS} ${ARG_ARGS})
      set_tests_properties(${name}_avx2_np${np} PROPERTIES
                           ENVIRONMENT "${TPL_MPI_TEST_ENV};${TPL_CAPPED_ENV}"
                           TIMEOUT ${ARG_TIMEOUT} LABELS "mpi;avx2" PROCESSORS 2)
    endif()
  endforeach()
endfunction()
