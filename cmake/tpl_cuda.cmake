# Optional CUDA backend (platform-notes §5). Sets TPL_WITH_CUDA to ON when nvcc, cuBLASLt and
# NCCL are all found; a CPU-only machine configures, builds and tests without them.
set(TPL_WITH_CUDA OFF)
set(TPL_WITH_CUDA_01 0)
if(NOT TPL_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES "90a;90")
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    find_package(CUDAToolkit)
    # NCCL: $NCCL_HOME, the CUDA toolkit, the system, then the pip wheel nvidia-nccl-cu13 of the
    # python3 on PATH (PyTorch's NCCL: include/nccl.h and lib/libnccl.so.2, no libnccl.so).
    set(_tpl_nccl_roots)
    if(DEFINED ENV{NCCL_HOME})
      list(APPEND _tpl_nccl_roots "$ENV{NCCL_HOME}")
    endif()
    find_program(TPL_PYTHON3 python3)
    if(TPL_PYTHON3)
      execute_process(
        COMMAND "${TPL_PYTHON3}" -c [=[
import importlib, os
for name in ("nvidia.nccl", "nvidia.cu13"):
    try:
        m = importlib.import_module(name)
    except Exception:
        continue
    for p in getattr(m, "__path__", []) or [os.path.dirname(m.__file__ or "")]:
        if os.path.isfile(os.path.join(p, "include", "nccl.h")):
            print(p)
]=]
        OUTPUT_VARIABLE _tpl_pip_nccl OUTPUT_STRIP_TRAILING_WHITESPACE
        ERROR_QUIET RESULT_VARIABLE _tpl_pip_rc)
      if(_tpl_pip_rc EQUAL 0 AND _tpl_pip_nccl)
        string(REPLACE "\n" ";" _tpl_pip_nccl "${_tpl_pip_nccl}")
      else()
        set(_tpl_pip_nccl)
      endif()
    endif()
    set(_tpl_nccl_inc_hints)
    foreach(r IN LISTS _tpl_nccl_roots)
      list(APPEND _tpl_nccl_inc_hints "${r}/include")
    endforeach()
    set(_tpl_nccl_pip_inc)
    foreach(r IN LISTS _tpl_pip_nccl)
      list(APPEND _tpl_nccl_pip_inc "${r}/include")
    endforeach()
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${_tpl_nccl_inc_hints} ${CUDAToolkit_INCLUDE_DIRS}
              PATHS ${_tpl_nccl_pip_inc})
    # The library next to the header found first, so that header and library match.
    set(_tpl_nccl_lib_hints)
    if(NCCL_INCLUDE_DIR)
      get_filename_component(_tpl_nccl_root "${NCCL_INCLUDE_DIR}" DIRECTORY)
      list(APPEND _tpl_nccl_lib_hints "${_tpl_nccl_root}/lib" "${_tpl_nccl_root}/lib64")
    endif()
    foreach(r IN LISTS _tpl_nccl_roots)
      list(APPEND _tpl_nccl_lib_hints "${r}/lib" "${r}/lib64")
    endforeach()
    set(_tpl_nccl_pip_lib)
    foreach(r IN LISTS _tpl_pip_nccl)
      list(APPEND _tpl_nccl_pip_lib "${r}/lib")
    endforeach()
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
                 HINTS ${_tpl_nccl_lib_hints} ${CUDAToolkit_LIBRARY_DIR}
                 PATHS ${_tpl_nccl_pip_lib})
    if(CUDAToolkit_FOUND AND NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      message(STATUS "tplinear: NCCL ${NCCL_LIBRARY} (headers ${NCCL_INCLUDE_DIR})")
      # SHARED (not UNKNOWN), so that CMake puts its directory on the build tree's RPATH.
      if(NCCL_LIBRARY MATCHES "\\.a$")
        add_library(NCCL::nccl STATIC IMPORTED)
      else()
        add_library(NCCL::nccl SHARED IMPORTED)
      endif()
      set_target_properties(NCCL::nccl PROPERTIES IMPORTED_LOCATION "${NCCL_LIBRARY}"
                            INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
      set(TPL_WITH_CUDA ON)
      set(TPL_WITH_CUDA_01 1)
    endif()
  endif()
  if(TPL_CUDA STREQUAL "ON" AND NOT TPL_WITH_CUDA)
    message(FATAL_ERROR "TPL_CUDA=ON but nvcc, cuBLASLt or NCCL was not found")
  endif()
endif()
