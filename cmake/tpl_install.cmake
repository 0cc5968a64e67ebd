# `cmake --install build --prefix P`: the public headers, the library, the tplinear command, a
# CMake package (tplinearConfig.cmake, a version file, tplinear::tplinear) and tplinear.pc.
# The same package is exported from the build tree, so a consumer can also point tplinear_DIR
# at the build directory (docs/package.md).
include(CMakePackageConfigHelpers)

set(_tpl_targets tplinear)
if(TPL_WITH_CUDA)
  list(APPEND _tpl_targets tplinear_cuda)
endif()
install(TARGETS ${_tpl_targets} EXPORT tplinearTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/tpl DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
if(TPL_WITH_TOOLS)
  install(TARGETS tplinear_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()

set(_tpl_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/tplinear)
set(TPL_PACKAGE_BACKENDS "")
foreach(b MPI ONEDNN OPENBLAS CUDA)
  if(TPL_WITH_${b})
    list(APPEND TPL_PACKAGE_BACKENDS ${b})
  endif()
endforeach()
set(TPL_NCCL_KIND SHARED)
if(NCCL_LIBRARY MATCHES "\\.a$")
  set(TPL_NCCL_KIND STATIC)
endif()
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/tplinearConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/tplinearConfig.cmake
                              INSTALL_DESTINATION ${_tpl_cmake_dir})
# 0.y releases may change the API at any minor version (docs/package.md): a consumer asking for
# 0.1 accepts 0.1.z only.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/tplinearConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(EXPORT tplinearTargets NAMESPACE tplinear:: DESTINATION ${_tpl_cmake_dir})
install(FILES ${PROJECT_BINARY_DIR}/tplinearConfig.cmake
              ${PROJECT_BINARY_DIR}/tplinearConfigVersion.cmake
        DESTINATION ${_tpl_cmake_dir})
export(EXPORT tplinearTargets NAMESPACE tplinear:: FILE ${PROJECT_BINARY_DIR}/tplinearTargets.cmake)

# pkg-config: the archive and what it links (the CMake package is the better way in).
set(TPL_PC_REQUIRES "nlohmann_json")
set(TPL_PC_LIBS "-ltplinear")
if(TPL_WITH_CUDA)
  # The two archives use each other; pkg-config drops a repeated -ltplinear, so a group.
  set(TPL_PC_LIBS "-Wl,--start-group -ltplinear -ltplinear_cuda -Wl,--end-group")
  string(APPEND TPL_PC_LIBS " -L${CUDAToolkit_LIBRARY_DIR}"
         " -Wl,-rpath,${CUDAToolkit_LIBRARY_DIR} -lcublasLt -lcudart ${NCCL_LIBRARY}")
endif()
if(TPL_WITH_MPI)
  string(APPEND TPL_PC_REQUIRES " ompi-cxx")
endif()
if(TPL_WITH_ONEDNN)
  string(APPEND TPL_PC_LIBS " -ldnnl")
endif()
if(TPL_WITH_OPENBLAS)
  string(APPEND TPL_PC_REQUIRES " openblas")
endif()
configure_file(${PROJECT_SOURCE_DIR}/cmake/tplinear.pc.in ${PROJECT_BINARY_DIR}/tplinear.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/tplinear.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
