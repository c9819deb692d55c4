# camex's test registration, included by the top-level CMakeLists.txt when tests are built, so the library's tests
# (tests/) and the examples' (examples/*/CMakeLists.txt) go through one function.
#
#   camex_test(<source> [HOST_ONLY] [LIBRARIES <target>...])
#
# <source> is a path under tests/ (tests/<area>/<feature>.cpp mirrors include/camex/<area>/<feature>.hpp, and
# tests/examples/ mirrors examples/). The ctest name is the path with dots: core/views.cpp -> core.views. By default
# the body is compiled once per Kokkos execution space compiled in, with CAMEX_TEST_SPACE naming it, and the name
# ends in the backend (core.views.Serial, core.views.OpenMP); the OpenMP instantiation also runs with a single
# thread (core.views.OpenMP.threads1), because results must not depend on the thread count. HOST_ONLY tests (file
# formats, configuration) are compiled once, without a backend in their name. Tests under examples/ also see
# examples/ on their include path; the library's tests see camex's public headers only.
#
# Every test is built with the sanitizers of CAMEX_TEST_SANITIZERS (AddressSanitizer, leaks included, and
# UndefinedBehaviorSanitizer by default; target camex_sanitized, below) at -O1: a report ends the test with an
# error. The optimised build (-O3, the build type's) is what the trainers, examples and benchmarks run, and the
# trainers' whole-program tests check it; the trainers are built sanitized as well (<trainer>_sanitized) for short
# runs under the sanitizers.
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

# What the sanitizers check. UBSan's alignment and null checks are left out: they are inserted at every access
# through a pointer or reference (every View access), which doubles the compile time of a test (80 against 40 s
# for kernels/gemm.cpp at -O1), and a null access is still caught, by AddressSanitizer, as a fault.
# On Kokkos' Cuda back-end there are none by default: nvcc does not take -fsanitize, and AddressSanitizer's
# shadow memory collides with the CUDA driver's mappings.
set(camex_default_sanitizers "address,undefined")
if(Kokkos_ENABLE_CUDA)
  set(camex_default_sanitizers "")
endif()
set(CAMEX_TEST_SANITIZERS "${camex_default_sanitizers}" CACHE STRING
    "Sanitizers camex's tests and sanitized trainers are built with (-fsanitize=...; empty: none)")
add_library(camex_sanitized INTERFACE)
if(CAMEX_TEST_SANITIZERS)
  target_compile_options(camex_sanitized INTERFACE -fsanitize=${CAMEX_TEST_SANITIZERS} -fno-sanitize=alignment,null
                         -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(camex_sanitized INTERFACE -fsanitize=${CAMEX_TEST_SANITIZERS})
endif()

# Every test process runs with threads pinned, and OMP_NUM_THREADS=2 unless it is a .threads1 run; the sanitizers
# report leaks at exit, a global initialised from one not yet initialised, and a stack trace with UBSan's reports.
# Not asked for: ASan's check of stack frames used after their return. It moves locals to frames of its own that
# GCC 12's code does not find aligned to 64 bytes, and an AVX-512 aligned store to an Eigen temporary then faults
# (kernels.gemm.Serial: a vmovdqa64 to such a frame), a fault of the check, not of the code.
set(camex_test_environment OMP_PROC_BIND=spread OMP_PLACES=threads
    ASAN_OPTIONS=detect_leaks=1:check_initialization_order=1 UBSAN_OPTIONS=print_stacktrace=1)

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
    target_link_libraries(${target} PRIVATE camex_test_main camex::camex camex_dev_flags camex_sanitized Eigen3::Eigen
                          ${arg_LIBRARIES})
    set_target_properties(${target} PROPERTIES CAMEX_REDUCED_OPTIMISATION ON)
    if(NOT arg_HOST_ONLY)
      target_compile_definitions(${target} PRIVATE CAMEX_TEST_SPACE=Kokkos::${backend} CAMEX_TEST_SPACE_NAME="${short}")
    endif()
    add_test(NAME ${test_name} COMMAND ${target})
    set_tests_properties(${test_name} PROPERTIES ENVIRONMENT "${camex_test_environment};OMP_NUM_THREADS=2")
    if(short STREQUAL "OpenMP")
      add_test(NAME ${test_name}.threads1 COMMAND ${target})
      set_tests_properties(${test_name}.threads1 PROPERTIES ENVIRONMENT "${camex_test_environment};OMP_NUM_THREADS=1")
    endif()
  endforeach()
endfunction()
