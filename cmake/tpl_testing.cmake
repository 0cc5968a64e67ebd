# tpl_add_mpi_test(<name> <target> NPROCS n1 n2 ... [TIMEOUT s])
# Registers one CTest entry per rank count, each running the target under mpirun with the
# environment root and oversubscription need on a 2-core machine (platform-notes §2.1, §2.7).
set(TPL_MPI_TEST_ENV
    "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_btl=self,vader;OMPI_MCA_oob_tcp_if_include=lo;OMPI_MCA_rmaps_base_oversubscribe=1;OMP_NUM_THREADS=1")
function(tpl_add_mpi_test name target)
  cmake_parse_arguments(ARG "" "TIMEOUT" "NPROCS;ARGS" ${ARGN})
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
  endforeach()
endfunction()
