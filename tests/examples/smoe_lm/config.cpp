// smoe_lm's configuration: a JSON file sets options and the command line overrides it; unknown keys, values of the
// wrong type and values no run can use are refused with a message naming the option.
#include <boost/test/unit_test.hpp>

#include "smoe_lm/config.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

bool parse(std::vector<std::string> args, TrainConfig& c) {
  args.insert(args.begin(), "smoe_lm");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_command_line(static_cast<int>(argv.size()), argv.data(), c);
}

void require_config_error(std::vector<std::string> args, std::initializer_list<std::string> fragments) {
  TrainConfig c;
  try {
    parse(std::move(args), c);
  } catch (const config_error& e) {
    for (const auto& f : fragments) BOOST_TEST(std::string(e.what()).find(f) != std::string::npos, "'" << f << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected config_error");
}

fs::path json_file(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("camex-config-" + std::to_string(::getpid()) + "-" + name + ".json");
  std::ofstream(p) << text;
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(json_then_command_line) {
  const auto file = json_file("ok", R"({"policy": "dare", "steps": 50, "lr": 0.001, "drop": 0.3, "routing": "sequence"})");
  TrainConfig c;
  BOOST_TEST(parse({"--config", file.string(), "--steps", "70", "--experts", "6"}, c));
  BOOST_TEST(c.policy == "dare");
  BOOST_TEST(c.steps == 70u);  // the command line wins
  BOOST_TEST(c.lr == 0.001);
  BOOST_TEST(c.drop == 0.3);
  BOOST_TEST(c.experts == 6u);
  BOOST_TEST(c.routing == "sequence");
  nlohmann::json round;
  to_json(round, c);
  TrainConfig back;
  from_json_checked(round, back, "test");
  nlohmann::json again;
  to_json(again, back);
  BOOST_TEST(again == round);
  fs::remove(file);
}

BOOST_AUTO_TEST_CASE(bad_configurations_name_the_option) {
  const auto unknown = json_file("unknown", R"({"polciy": "ties"})");
  require_config_error({"--config", unknown.string()}, {"unknown option 'polciy'"});
  const auto type = json_file("type", R"({"steps": "many"})");
  require_config_error({"--config", type.string()}, {"option 'steps' expects a value like 600", "\"many\""});
  const auto negative = json_file("negative", R"({"batch": -2})");
  require_config_error({"--config", negative.string()}, {"option 'batch' expects a count >= 0"});
  const auto broken = json_file("broken", R"({"steps": )");
  require_config_error({"--config", broken.string()}, {"not valid JSON"});
  for (const auto& f : {unknown, type, negative, broken}) fs::remove(f);
  require_config_error({"--policy", "tie"}, {"option --policy", "one of ca, dare", "given 'tie'"});
  require_config_error({"--routing", "token"}, {"option --routing", "segment or sequence"});
  require_config_error({"--context", "100", "--segment", "32"}, {"option --segment", "a divisor of --context 100", "given 32"});
  require_config_error({"--channels", "100", "--heads", "3"}, {"option --heads", "a divisor of --channels 100"});
  require_config_error({"--experts", "1"}, {"option --experts", "2 to 64"});
  require_config_error({"--top-k", "9"}, {"option --top-k", "at most --experts 4"});
  require_config_error({"--density", "0"}, {"option --density"});
  require_config_error({"--policy", "domain", "--alpha", "1"}, {"option --alpha", "cancels the base"});
  require_config_error({"--drop", "1"}, {"option --drop"});
  require_config_error({"--steps", "10", "--stop-after", "10"}, {"option --stop-after", "before --steps 10"});
  require_config_error({"--resume", "a", "--upcycle-from", "b"}, {"option --upcycle-from", "no --resume"});
  require_config_error({"--steps", "ten"}, {"--steps"});
  require_config_error({"--no-such-option"}, {"no-such-option"});
}
