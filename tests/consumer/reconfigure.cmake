# cmake -P script: what a user does to an existing camex build folder, configuring camex alone each time.
#   MODE=another_kokkos: configured against one Kokkos, then given Kokkos_ROOT of another, the folder must use
#     the other (a copy of the same install, at another prefix).
#   MODE=without_benchmark: with Google Benchmark not to be found, configuring still succeeds and says that the
#     benchmarks are skipped.
function(configure what)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${CAMEX_SOURCE_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
                          -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCAMEX_BUILD_TESTS=OFF -DCAMEX_BUILD_EXAMPLES=OFF
                          -DCAMEX_INSTALL=OFF -DCAMEX_CHECK_CUDA_BUILD=OFF ${ARGN}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(configure_output "${out}" PARENT_SCOPE)
endfunction()

function(cached name out)
  file(STRINGS ${WORK_DIR}/build/CMakeCache.txt line REGEX "^${name}:")
  string(REGEX REPLACE "^[^=]*=" "" value "${line}")
  set(${out} "${value}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
if(MODE STREQUAL "another_kokkos")
  # Kokkos_DIR is <prefix>/<libdir>/cmake/Kokkos.
  get_filename_component(prefix "${Kokkos_DIR}/../../.." ABSOLUTE)
  if(NOT EXISTS ${prefix}/include/Kokkos_Core.hpp)
    message(FATAL_ERROR "Kokkos_DIR=${Kokkos_DIR} is not <prefix>/<libdir>/cmake/Kokkos of an installed Kokkos")
  endif()
  file(COPY ${prefix}/ DESTINATION ${WORK_DIR}/other-kokkos)
  configure("configure against ${prefix}" -DKokkos_DIR=${Kokkos_DIR} -DCAMEX_BUILD_BENCHMARKS=OFF)
  cached(Kokkos_DIR first)
  configure("reconfigure with Kokkos_ROOT=${WORK_DIR}/other-kokkos" -DKokkos_ROOT=${WORK_DIR}/other-kokkos)
  cached(Kokkos_DIR second)
  file(REAL_PATH "${second}" second_real)
  file(REAL_PATH "${WORK_DIR}/other-kokkos" other_real)
  string(FIND "${second_real}" "${other_real}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "after Kokkos_ROOT=${WORK_DIR}/other-kokkos the build uses Kokkos_DIR=${second} (before: ${first})")
  endif()
  message(STATUS "Kokkos_DIR ${first} -> ${second}: ok")
elseif(MODE STREQUAL "without_benchmark")
  configure("configure without Google Benchmark" -DKokkos_DIR=${Kokkos_DIR} -DCAMEX_BUILD_BENCHMARKS=ON
            -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON)
  if(NOT configure_output MATCHES "benchmarks skipped")
    message(FATAL_ERROR "configuring without Google Benchmark did not say the benchmarks are skipped:\n${configure_output}")
  endif()
  message(STATUS "configured without Google Benchmark, benchmarks skipped: ok")
else()
  message(FATAL_ERROR "MODE must be another_kokkos or without_benchmark, not '${MODE}'")
endif()
