# cpattn_install.cmake — the shared library and everything `cmake --install`
# puts under a prefix (included by the top-level CMakeLists.txt after the
# library and the program are defined).  See docs/install.md.
#
#   PREFIX/include/cpattn.h
#   PREFIX/LIBDIR/libcpattn.a                 static, as the build always made it
#   PREFIX/LIBDIR/libcpattn.so.MAJOR.MINOR    shared; SONAME libcpattn.so.MAJOR.MINOR (0.x:
#                                             every minor release may change the ABI)
#   PREFIX/LIBDIR/pkgconfig/cpattn.pc         pkg-config --cflags --libs cpattn
#   PREFIX/LIBDIR/cmake/cpattn/               find_package(cpattn): cpattn::cpattn (shared),
#                                             cpattn::cpattn_static
#   PREFIX/bin/cpattn                         the program
#   PREFIX/lib/python3/dist-packages/cpattn/  the Python package (ctypes over the shared library)
#
# The shared library exports only the functions of include/cpattn.h: a
# linker version script generated from the header at build time
# (cmake/cpattn_exports.cmake), so a function added to the header is
# exported with no other edit and nothing internal leaks.
include(GNUInstallDirs)

set(CPA_SOVERSION "${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}")
set(CPA_PY_DIR "lib/python3/dist-packages") # Debian's layout for python3

# The static library's objects are reused for the shared one: compile them
# position-independent (costs nothing measurable on x86-64).
set_target_properties(cpattn PROPERTIES POSITION_INDEPENDENT_CODE ON)

set(CPA_MAP "${CMAKE_BINARY_DIR}/cpattn.map")
add_custom_command(
  OUTPUT "${CPA_MAP}"
  COMMAND ${CMAKE_COMMAND} -DHEADER=${CMAKE_SOURCE_DIR}/include/cpattn.h -DOUT=${CPA_MAP}
          -DVERSION_NODE=CPATTN_${CPA_SOVERSION} -P ${CMAKE_SOURCE_DIR}/cmake/cpattn_exports.cmake
  DEPENDS ${CMAKE_SOURCE_DIR}/include/cpattn.h ${CMAKE_SOURCE_DIR}/cmake/cpattn_exports.cmake
  COMMENT "Version script of libcpattn.so from include/cpattn.h")
add_custom_target(cpattn_map DEPENDS "${CPA_MAP}")

add_library(cpattn_shared SHARED $<TARGET_OBJECTS:cpattn>)
add_dependencies(cpattn_shared cpattn_map)
set_target_properties(cpattn_shared PROPERTIES
  OUTPUT_NAME cpattn VERSION ${PROJECT_VERSION} SOVERSION ${CPA_SOVERSION}
  LINK_DEPENDS "${CPA_MAP}")
target_include_directories(cpattn_shared PUBLIC ${CMAKE_SOURCE_DIR}/include)
target_link_libraries(cpattn_shared PRIVATE OpenMP::OpenMP_C ${CPA_OPENBLAS_LIB} m
                                    PUBLIC MPI::MPI_C)
target_link_options(cpattn_shared PRIVATE "LINKER:--version-script=${CPA_MAP}")
if(NOT CPA_SANITIZE) # sanitizer runtimes are the executable's to bring
  target_link_options(cpattn_shared PRIVATE "LINKER:--no-undefined")
endif()

# ---- install rules -----------------------------------------------------------
install(FILES ${CMAKE_SOURCE_DIR}/include/cpattn.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS cpattn cpattn_shared
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Development)
install(TARGETS cpattn_tool RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})

# Paths between installed folders, relative, so every installed file works
# under whatever --prefix `cmake --install` is given.
file(RELATIVE_PATH CPA_PC_TO_PREFIX "/P/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/P")
file(RELATIVE_PATH CPA_CMAKE_TO_PREFIX "/P/${CMAKE_INSTALL_LIBDIR}/cmake/cpattn" "/P")
file(RELATIVE_PATH CPA_PY_TO_LIBDIR "/P/${CPA_PY_DIR}/cpattn" "/P/${CMAKE_INSTALL_LIBDIR}")
# What a consumer links besides libcpattn: MPI (the header includes mpi.h,
# and the caller makes the communicator); the static library also needs
# OpenMP and the OpenMP build of OpenBLAS (by path, as the build links it).
set(CPA_PC_PRIVATE "${OpenMP_C_FLAGS} ${CPA_OPENBLAS_LIB} -lm")

configure_file(${CMAKE_SOURCE_DIR}/cmake/cpattn.pc.in ${CMAKE_BINARY_DIR}/cpattn.pc @ONLY)
configure_file(${CMAKE_SOURCE_DIR}/cmake/cpattnConfig.cmake.in
               ${CMAKE_BINARY_DIR}/cpattnConfig.cmake @ONLY)
include(CMakePackageConfigHelpers)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/cpattnConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/cpattn.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
install(FILES ${CMAKE_BINARY_DIR}/cpattnConfig.cmake ${CMAKE_BINARY_DIR}/cpattnConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/cpattn)

# The Python package: pure Python over the shared library (docs/python.md);
# _install.py tells it where the library sits relative to itself.
configure_file(${CMAKE_SOURCE_DIR}/cmake/cpattn_install.py.in ${CMAKE_BINARY_DIR}/python/_install.py
               @ONLY)
install(DIRECTORY ${CMAKE_SOURCE_DIR}/python/cpattn DESTINATION ${CPA_PY_DIR}
        FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
install(FILES ${CMAKE_BINARY_DIR}/python/_install.py DESTINATION ${CPA_PY_DIR}/cpattn)
