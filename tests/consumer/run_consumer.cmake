# cmake -P script: builds and runs one consumer project (see CMakeLists.txt beside it).
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  message(STATUS "${what}: ok\n${out}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(configure_args -S ${CONSUMER_DIR} -B ${WORK_DIR}/build -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DKokkos_DIR=${Kokkos_DIR})
if(MODE STREQUAL "find_package")
  run("install camex into ${WORK_DIR}/prefix"
      ${CMAKE_COMMAND} --install ${CAMEX_BUILD_DIR} --prefix ${WORK_DIR}/prefix)
  list(APPEND configure_args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  list(APPEND configure_args -DCAMEX_SOURCE_DIR=${CAMEX_SOURCE_DIR})
endif()
run("configure the ${MODE} consumer" ${CMAKE_COMMAND} ${configure_args})
run("build the ${MODE} consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run("run the ${MODE} consumer" ${WORK_DIR}/build/consumer)
