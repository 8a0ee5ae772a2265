# Install rules and the CMake package: find_package(nybble) -> nybble::nybble (shared) and
# nybble::nybble_static.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS nybble nybble_static EXPORT nybbleTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY cpp/include/nybble DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT nybbleTargets NAMESPACE nybble:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/nybble)
configure_package_config_file(cmake/nybbleConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/nybbleConfig.cmake
                              INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/nybble)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/nybbleConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/nybbleConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/nybbleConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/nybble)
