// smoe_vit's configuration: the shared options and the ViT's own from JSON and the command line, where the experts
// go (V-MoE's every-2 and last-2 placements), and bad values refused with a message naming the option.
#include <boost/test/unit_test.hpp>

#include "smoe_vit/config.hpp"

#include <string>
#include <vector>

using namespace camex::examples;

namespace {

bool parse(std::vector<std::string> args, VitConfig& c) {
  args.insert(args.begin(), "smoe_vit");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return parse_command_line(static_cast<int>(argv.size()), argv.data(), c);
}

void require_config_error(std::vector<std::string> args, std::initializer_list<std::string> fragments) {
  VitConfig c = vit_defaults();
  try {
    parse(std::move(args), c);
  } catch (const config_error& e) {
    for (const auto& f : fragments) BOOST_TEST(std::string(e.what()).find(f) != std::string::npos, "'" << f << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected config_error");
}

}  // namespace

BOOST_AUTO_TEST_CASE(options_and_placements) {
  VitConfig c = vit_defaults();
  BOOST_TEST(parse({"--policy", "smear", "--routing", "token", "--patch", "4", "--pooling", "mean", "--moe-layers", "last-2"}, c));
  BOOST_TEST(c.merge.policy == "smear");
  BOOST_TEST(c.merge.routing == "token");
  BOOST_TEST(c.task.patch == 4u);
  BOOST_TEST(c.task.pooling == "mean");
  BOOST_TEST(c.optimiser.batch == 128u);  // the ViT's default
  BOOST_TEST((merged_blocks("all", 3) == std::vector<bool>{true, true, true}));
  BOOST_TEST((merged_blocks("every-2", 4) == std::vector<bool>{false, true, false, true}));
  BOOST_TEST((merged_blocks("every-2", 5) == std::vector<bool>{false, true, false, true, false}));
  BOOST_TEST((merged_blocks("last-2", 4) == std::vector<bool>{false, false, true, true}));
  BOOST_TEST((merged_blocks("last-1", 1) == std::vector<bool>{true}));
}

BOOST_AUTO_TEST_CASE(bad_values_name_the_option) {
  require_config_error({"--routing", "segment"}, {"option --routing", "image or token", "given 'segment'"});
  require_config_error({"--patch", "5"}, {"option --patch", "a divisor of the 28-pixel side", "given 5"});
  require_config_error({"--pooling", "max"}, {"option --pooling", "cls or mean"});
  require_config_error({"--moe-layers", "last-5"}, {"option --moe-layers", "n from 1 to --layers 4", "given 'last-5'"});
  require_config_error({"--moe-layers", "every-9"}, {"option --moe-layers", "at least one of the 4 blocks"});
  require_config_error({"--moe-layers", "some"}, {"option --moe-layers", "given 'some'"});
  require_config_error({"--moe-layers", "every-0"}, {"option --moe-layers"});
  require_config_error({"--channels", "30", "--heads", "4"}, {"option --heads", "a divisor of --channels 30"});
  require_config_error({"--pad", "9"}, {"option --pad", "at most 8"});
  require_config_error({"--policy", "tie"}, {"option --policy", "given 'tie'"});
  // A dense model ignores the placement.
  VitConfig c = vit_defaults();
  BOOST_TEST(parse({"--policy", "dense", "--moe-layers", "some"}, c));
}
