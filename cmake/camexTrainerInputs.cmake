# What the example trainers need to read their inputs and options, beside camex: sentencepiece (the tokenizer),
# CLI11 (options), nlohmann-json (configurations, checkpoint headers), zlib (compressed IDX files), and the policy
# registry compiled in (examples/common/moe/policies.json as a string constant, regenerated when the file changes).
# Included by examples/common (the trainers) and by tests/fuzz (the readers' fuzz targets, a project of its own that
# needs no Kokkos).
#
# Sets camex_trainer_inputs_found; when true, defines the INTERFACE target camex_trainer_inputs.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(SENTENCEPIECE IMPORTED_TARGET sentencepiece)
endif()
find_package(CLI11 QUIET CONFIG)
find_package(nlohmann_json 3 QUIET CONFIG)
find_package(ZLIB QUIET)
if(NOT SENTENCEPIECE_FOUND OR NOT CLI11_FOUND OR NOT nlohmann_json_FOUND OR NOT ZLIB_FOUND)
  message(STATUS "camex: the example trainers' readers need sentencepiece (${SENTENCEPIECE_FOUND}), CLI11 "
                 "(${CLI11_FOUND}), nlohmann-json (${nlohmann_json_FOUND}) and zlib (${ZLIB_FOUND}); run scripts/setup")
  set(camex_trainer_inputs_found OFF)
  return()
endif()
set(camex_trainer_inputs_found ON)

get_filename_component(camex_examples_dir ${CMAKE_CURRENT_LIST_DIR}/../examples ABSOLUTE)
set(camex_policies_json ${camex_examples_dir}/common/moe/policies.json)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${camex_policies_json})
file(READ ${camex_policies_json} CAMEX_POLICIES_JSON)
configure_file(${camex_examples_dir}/common/moe/policies_json.hpp.in
               ${CMAKE_CURRENT_BINARY_DIR}/generated/common/moe/policies_json.hpp @ONLY)

add_library(camex_trainer_inputs INTERFACE)
target_include_directories(camex_trainer_inputs INTERFACE ${camex_examples_dir} ${CMAKE_CURRENT_BINARY_DIR}/generated)
target_compile_features(camex_trainer_inputs INTERFACE cxx_std_20)
target_link_libraries(camex_trainer_inputs INTERFACE PkgConfig::SENTENCEPIECE CLI11::CLI11 nlohmann_json::nlohmann_json
                      ZLIB::ZLIB)
