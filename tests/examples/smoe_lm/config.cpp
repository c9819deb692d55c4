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

bool parse(std::vector<std::string> args, LmConfig& c) {
  args.insert(args.begin(), "smoe_lm");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_command_line(static_cast<int>(argv.size()), argv.data(), c);
}

void require_config_error(std::vector<std::string> args, std::initializer_list<std::string> fragments) {
  LmConfig c = lm_defaults();
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
  LmConfig c = lm_defaults();
  BOOST_TEST(parse({"--config", file.string(), "--steps", "70", "--experts", "6", "--channels", "64"}, c));
  BOOST_TEST(c.merge.policy == "dare");
  BOOST_TEST(c.optimiser.steps == 70u);  // the command line wins
  BOOST_TEST(c.optimiser.lr == 0.001);
  BOOST_TEST(c.merge.drop == 0.3);
  BOOST_TEST(c.merge.experts == 6u);
  BOOST_TEST(c.merge.routing == "sequence");
  BOOST_TEST(c.task.channels == 64u);
  nlohmann::json round;
  to_json(round, c);
  // One flat object: the task's keys beside the shared parts'.
  BOOST_TEST(round.at("channels") == 64);
  BOOST_TEST(round.at("policy") == "dare");
  BOOST_TEST(round.at("log_every") == 20);
  LmConfig back;
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
  require_config_error({"--routing", "token"}, {"option --routing", "segment or sequence", "given 'token'"});
  require_config_error({"--context", "100", "--segment", "32"}, {"option --segment", "a divisor of --context 100", "given 32"});
  require_config_error({"--channels", "100", "--heads", "3"}, {"option --heads", "a divisor of --channels 100"});
  require_config_error({"--experts", "1"}, {"option --experts", "2 to 64"});
  require_config_error({"--top-k", "9"}, {"option --top-k", "at most --experts 4"});
  require_config_error({"--density", "0"}, {"option --density"});
  require_config_error({"--policy", "domain", "--alpha", "1"}, {"option --alpha", "cancels the base"});
  require_config_error({"--drop", "1"}, {"option --drop"});
  require_config_error({"--bucket-mb", "-1"}, {"option --bucket-mb", "0 to 1e6 MB", "given -1"});
  require_config_error({"--steps", "10", "--stop-after", "10"}, {"option --stop-after", "before --steps 10"});
  require_config_error({"--resume", "a", "--upcycle-from", "b"}, {"option --upcycle-from", "no --resume"});
  require_config_error({"--steps", "ten"}, {"--steps"});
  require_config_error({"--no-such-option"}, {"no-such-option"});
}

// The registry (examples/common/moe/policies.json) is what --policy accepts and what the checks read.
BOOST_AUTO_TEST_CASE(every_registered_policy_parses) {
  std::vector<std::string> names;
  for (const PolicyRule& rule : policy_rules()) {
    LmConfig c = lm_defaults();
    BOOST_TEST(parse({"--policy", rule.name}, c), rule.name);
    BOOST_TEST(c.merge.policy == rule.name);
    names.push_back(rule.name);
  }
  BOOST_TEST(names.size() == 10u);
  BOOST_TEST(policy_rule("domain").alpha_one_cancels_base);
  BOOST_TEST(merge_step(policy_rule("domain"), 0) == 0.5);
  BOOST_TEST(merge_step(policy_rule("ties"), 0.7) == 0.7);
  BOOST_TEST(merge_step(policy_rule("smoe"), 0.7) == 1.0);  // no base: the step is 1 whatever --alpha says
  BOOST_TEST(router_top_k(policy_rule("smoe"), 0) == 2u);
  BOOST_TEST(router_top_k(policy_rule("ties"), 0) == 0u);
  BOOST_TEST(router_top_k(policy_rule("smoe"), 3) == 3u);
  BOOST_TEST(!policy_rule("dense").experts);
}
