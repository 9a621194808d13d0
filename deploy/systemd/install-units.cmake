# install-units.cmake - run by `cmake --install` (CMakeLists.txt sets RLHF_UNIT_SRC, the source
# directory of the units, RLHF_UNIT_DIR and RLHF_BINDIR, both relative to the prefix unless
# absolute): installs the systemd units and their drop-ins with ExecStart= naming the
# installed binaries (the units say /usr/local/bin, CMake's default prefix), so
# `cmake --install build --prefix /usr` gives units that run /usr/bin/rlhf-master.
foreach(var RLHF_UNIT_DIR RLHF_BINDIR)
  if(IS_ABSOLUTE "${${var}}")
    set(${var}_FULL "${${var}}")
  else()
    set(${var}_FULL "${CMAKE_INSTALL_PREFIX}/${${var}}")
  endif()
endforeach()
file(GLOB_RECURSE units RELATIVE "${RLHF_UNIT_SRC}" "${RLHF_UNIT_SRC}/*.service"
  "${RLHF_UNIT_SRC}/*.service.d/*.conf")
foreach(unit ${units})
  file(READ "${RLHF_UNIT_SRC}/${unit}" text)
  string(REPLACE "/usr/local/bin/" "${RLHF_BINDIR_FULL}/" text "${text}")
  set(dest "$ENV{DESTDIR}${RLHF_UNIT_DIR_FULL}/${unit}")
  message(STATUS "Installing: ${dest}")
  file(WRITE "${dest}" "${text}")
  list(APPEND CMAKE_INSTALL_MANIFEST_FILES "${dest}")
endforeach()
