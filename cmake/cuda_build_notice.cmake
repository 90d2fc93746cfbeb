# msdacore_cuda_build_notice(): tells the person running `pip install .` (whose terminal
# pip otherwise keeps silent until the build ends) that the CUDA kernels are compiled, for
# which architectures, roughly how long that takes and how to skip it. Printed to the
# controlling terminal when there is one (pip shows no build output without -v), and to
# CMake's log as a STATUS message either way. Only in pip builds (SKBUILD).
#
# The estimate: MSDACORE_CUDA_SECONDS_PER_ARCH seconds of CPU time per real architecture,
# divided over the logical cores. The library with CUDA for the 5 default architectures
# is 94 s of CPU time (docs/building.md), about 19 s per architecture; 25 leaves room for
# the extension and CMake's configure.
set(MSDACORE_CUDA_SECONDS_PER_ARCH 25)

function(msdacore_cuda_build_notice)
  if(NOT DEFINED SKBUILD)
    return()
  endif()
  set(archs "${CMAKE_CUDA_ARCHITECTURES}")
  set(real 0)
  foreach(arch IN LISTS archs)
    if(NOT arch MATCHES "-virtual$")
      math(EXPR real "${real} + 1")
    endif()
  endforeach()
  cmake_host_system_information(RESULT cores QUERY NUMBER_OF_LOGICAL_CORES)
  if(cores LESS 1)
    set(cores 1)
  endif()
  if(archs MATCHES "^(native|all|all-major)$")
    set(what "architectures '${archs}'")
    set(how_long "")
  else()
    math(EXPR seconds "(${real} * ${MSDACORE_CUDA_SECONDS_PER_ARCH} + ${cores} - 1) / ${cores}")
    math(EXPR minutes "(${seconds} + 59) / 60")
    set(what "${real} GPU architecture(s) (${archs})")
    set(how_long " This takes about ${minutes} min on this machine's ${cores} idle core(s), more when they are busy (a CPU-only build: about 1 min).")
  endif()
  # Objects of an earlier build in this build directory: ninja recompiles only what changed.
  set(doing "compiling the CUDA kernels")
  file(GLOB previous "${CMAKE_BINARY_DIR}/cpp/CMakeFiles/msdacore.dir/__/cuda/*.o")
  if(previous)
    set(doing "the CUDA kernels")
    set(how_long " Objects of an earlier build are reused: only changed sources are recompiled.")
  endif()
  string(CONCAT notice
    "msdacore: ${doing} with nvcc ${CMAKE_CUDA_COMPILER_VERSION} for ${what}."
    "${how_long}\n"
    "  CPU-only instead:           pip install . -C cmake.define.MSDACORE_CUDA=OFF\n"
    "  only this machine's GPU(s): pip install . -C cmake.define.CMAKE_CUDA_ARCHITECTURES=native")
  message(STATUS "${notice}")
  if(NOT WIN32)
    # No terminal (CI, a pipe): nothing, quietly.
    execute_process(COMMAND sh -c "printf '\\n%s\\n' \"$1\" > /dev/tty" sh "${notice}"
                    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  endif()
endfunction()
