// Fuzz target: a --config JSON file (train/config.hpp), given to both trainers' command lines as a user would. Any
// input configures a run that passes the trainer's checks or is refused with config_error.
#include "smoe_lm/config.hpp"
#include "smoe_vit/config.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace {

template <class Config>
void parse_as_a_trainer(const std::string& file, Config config) {
  std::string program = "trainer", option = "--config", value = file;
  char* argv[] = {program.data(), option.data(), value.data(), nullptr};
  try {
    static_cast<void>(camex::examples::parse_command_line(3, argv, config));
  } catch (const camex::examples::config_error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto path = camex::fuzz::fresh_scratch() / "config.json";
  camex::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  parse_as_a_trainer(path.string(), lm_defaults());
  parse_as_a_trainer(path.string(), vit_defaults());
  return 0;
}
