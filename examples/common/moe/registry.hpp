#pragma once
// The merge policies the trainers offer, read from common/moe/policies.json (compiled in by CMake as
// common/moe/policies_json.hpp): the one table that --policy, --help, the configuration checks, the choice of
// what to build (families.hpp) and the PyTorch twins all read.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/moe/policies_json.hpp"

namespace camex::examples {

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// One entry of policies.json (its "about" says what each field means).
struct PolicyRule {
  std::string name, family, help, base, mask, router;
  bool experts = true, curvature = false, alpha_is_option = true, alpha_one_cancels_base = false;
  std::size_t top_k = 0;
  double default_alpha = 1;
  std::vector<std::string> options;
};

inline const std::vector<PolicyRule>& policy_rules() {
  static const std::vector<PolicyRule> rules = [] {
    std::vector<PolicyRule> out;
    const nlohmann::json table = nlohmann::json::parse(policies_json);
    for (const auto& p : table.at("policies")) {
      const auto text = [&](const char* key) { return p.at(key).is_null() ? std::string() : p.at(key).get<std::string>(); };
      out.push_back({.name = text("name"), .family = text("family"), .help = text("help"), .base = text("base"),
                     .mask = text("mask"), .router = text("router"), .experts = p.at("experts").get<bool>(),
                     .curvature = p.at("curvature").get<bool>(), .alpha_is_option = text("alpha") == "option",
                     .alpha_one_cancels_base = p.at("alpha_one_cancels_base").get<bool>(),
                     .top_k = p.at("top_k").get<std::size_t>(), .default_alpha = p.at("default_alpha").get<double>(),
                     .options = p.at("options").get<std::vector<std::string>>()});
    }
    return out;
  }();
  return rules;
}

/// The rule of policy `name`; an unknown name is a config_error listing the known ones.
inline const PolicyRule& policy_rule(const std::string& name) {
  std::vector<std::string> names;
  for (const PolicyRule& p : policy_rules()) {
    if (p.name == name) return p;
    names.push_back(p.name);
  }
  std::sort(names.begin(), names.end());
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  throw config_error("option --policy: expected one of " + list + ", given '" + name + "'");
}

/// The step along the merged deltas: --alpha where it is the policy's option and not 0, else the policy's default.
inline double merge_step(const PolicyRule& rule, double alpha) {
  return rule.alpha_is_option && alpha > 0 ? alpha : rule.default_alpha;
}

/// The router's k: --top-k, or the policy's default where 0 was given.
inline std::size_t router_top_k(const PolicyRule& rule, std::size_t top_k) { return top_k == 0 ? rule.top_k : top_k; }

}  // namespace camex::examples
