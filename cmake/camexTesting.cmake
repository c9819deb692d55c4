# camex's test registration, included by the top-level CMakeLists.txt when tests are built, so the library's tests
# (tests/) and the examples' (examples/*/CMakeLists.txt) go through one function.
#
#   camex_test(<source> [HOST_ONLY] [LIBRARIES <target>...])
#
# <source> is a path under tests/ (tests/<area>/<feature>.cpp mirrors include/camex/<area>/<feature>.hpp, and
# tests/examples/ mirrors examples/). The ctest name is the path with dots: core/views.cpp -> core.views. By default
# the body is compiled once per Kokkos execution space compiled in, with CAMEX_TEST_SPACE naming it, and the name
# ends in the backend (core.views.Serial, core.views.OpenMP); the OpenMP instantiation also runs with a single
# thread (core.views.OpenMP.threads1), because results must not depend on the thread count; the Serial one is
# compiled at -O1 (below). HOST_ONLY tests (file
# formats, configuration) are compiled once, without a backend in their name. Tests under examples/ also see
# examples/ on their include path; the library's tests see camex's public headers only.
find_package(Boost 1.74 REQUIRED COMPONENTS unit_test_framework)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)

set(camex_backends)
foreach(device IN ITEMS SERIAL OPENMP THREADS CUDA HIP SYCL)
  if(Kokkos_ENABLE_${device})
    string(REPLACE SERIAL Serial backend ${device})
    string(REPLACE OPENMP OpenMP backend ${backend})
    string(REPLACE THREADS Threads backend ${backend})
    string(REPLACE CUDA Cuda backend ${backend})
    string(REPLACE HIP Experimental::HIP backend ${backend})
    string(REPLACE SYCL Experimental::SYCL backend ${backend})
    list(APPEND camex_backends ${backend})
  endif()
endforeach()
message(STATUS "camex tests run on: ${camex_backends}")

add_library(camex_test_main OBJECT ${PROJECT_SOURCE_DIR}/tests/support/main.cpp)
target_link_libraries(camex_test_main PUBLIC camex::camex Boost::unit_test_framework)
target_compile_definitions(camex_test_main PUBLIC BOOST_TEST_DYN_LINK)

# Every test process runs with threads pinned, and OMP_NUM_THREADS=2 unless it is a .threads1 run.
set(camex_test_environment OMP_PROC_BIND=spread OMP_PLACES=threads)

function(camex_test source)
  cmake_parse_arguments(PARSE_ARGV 1 arg "HOST_ONLY" "" "LIBRARIES")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "camex_test(${source}): unexpected arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  string(REGEX REPLACE "\\.cpp$" "" stem ${source})
  string(REPLACE "/" "." name ${stem})
  set(variants ${camex_backends})
  if(arg_HOST_ONLY)
    set(variants host)
  endif()
  foreach(backend IN LISTS variants)
    string(REGEX REPLACE ".*::" "" short ${backend})
    if(arg_HOST_ONLY)
      set(test_name ${name})
    else()
      set(test_name ${name}.${short})
    endif()
    string(REPLACE "." "_" target test_${test_name})
    add_executable(${target} ${PROJECT_SOURCE_DIR}/tests/${source})
    target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/tests/support)
    if(source MATCHES "^examples/")
      target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/examples)
    endif()
    target_link_libraries(${target} PRIVATE camex_test_main camex::camex camex_dev_flags Eigen3::Eigen ${arg_LIBRARIES})
    if(NOT arg_HOST_ONLY)
      target_compile_definitions(${target} PRIVATE CAMEX_TEST_SPACE=Kokkos::${backend} CAMEX_TEST_SPACE_NAME="${short}")
    endif()
    # The Serial instantiation checks the algorithm on the simplest backend, at -O1 in an optimised build
    # (camex_dev_flags): it compiles in about half the time of -O3 (the suite's build is CI's largest piece), and
    # a second optimisation level beside the other backends' catches results that depend on one. The other
    # backends keep the build's flags.
    if(short STREQUAL "Serial")
      set_target_properties(${target} PROPERTIES CAMEX_REDUCED_OPTIMISATION ON)
    endif()
    add_test(NAME ${test_name} COMMAND ${target})
    set_tests_properties(${test_name} PROPERTIES ENVIRONMENT "${camex_test_environment};OMP_NUM_THREADS=2")
    if(short STREQUAL "OpenMP")
      add_test(NAME ${test_name}.threads1 COMMAND ${target})
      set_tests_properties(${test_name}.threads1 PROPERTIES ENVIRONMENT "${camex_test_environment};OMP_NUM_THREADS=1")
    endif()
  endforeach()
endfunction()
