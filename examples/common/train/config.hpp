#pragma once
// What configures a training run of any task, in three shared parts (how the MLPs merge their experts, the
// optimiser, the run's reporting and checkpoints) beside the task's own part (data and model shape). The four
// read and write one flat JSON object (--config files, config.json, checkpoints, the twins' dumps) under the long
// option names, and the command line overrides a --config file. Bad values are refused with a message naming the
// option.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/moe/registry.hpp"

namespace camex::examples {

struct MergeConfig {
  std::string policy = "ties-ca";
  std::size_t experts = 4, top_k = 0;  ///< top_k 0: the policy's default (every expert, 2 for smoe)
  std::string routing;                 ///< which tokens share a routing decision: the task's choices
  std::size_t segment = 32;
  double alpha = 0, density = 0.2, drop = 0.1, gamma = 0.5, aux = 1e-2;
  std::size_t rank = 2;
  bool router_noise = true;
};

struct OptimiserConfig {
  std::uint64_t steps = 600, seed = 1;
  std::size_t batch = 8;
  double lr = 2e-3, weight_decay = 0.1, clip = 1.0, final_lr_fraction = 0.1;
  std::uint64_t warmup = 60;
};

struct RunConfig {
  std::uint64_t log_every = 20, eval_every = 100, checkpoint_every = 200;
  std::size_t eval_batches = 16;
  std::string out;
  std::uint64_t stop_after = 0;  ///< stop (with a checkpoint) after this step, as an interruption would
  std::string resume, upcycle_from;
  std::string dump_step;  ///< write one step's parameters, batch, outputs and gradients here, and stop
  bool plot = true;
  bool profile = false;   ///< time every kernel, report the step's time by kernel category (kernels.csv)
  bool plan = false;      ///< describe the run (parameters, FLOPs, what it sends) and stop before training; not saved
  std::string host_threads = "auto";  ///< auto, all or all-but-one (camex::HostThreads)
  bool shard_optimizer = false;  ///< ZeRO stage 1: each of several processes keeps and updates its shard of AdamW
  double bucket_mb = 4;  ///< gradients sent together during the backward, in MB (0: each block's apart)
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(MergeConfig, policy, experts, top_k, routing, segment, alpha, density, drop, gamma, aux,
                                   rank, router_noise)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(OptimiserConfig, steps, seed, batch, lr, weight_decay, clip, final_lr_fraction, warmup)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RunConfig, log_every, eval_every, checkpoint_every, eval_batches, out, stop_after, resume,
                                   upcycle_from, dump_step, plot, profile, host_threads, shard_optimizer, bucket_mb)

/// A task's configuration (its data and model) with the shared parts.
template <class TaskConfig>
struct TrainerConfig {
  TaskConfig task;
  MergeConfig merge;
  OptimiserConfig optimiser;
  RunConfig run;
};

/// One flat object of every part's keys.
template <class TaskConfig>
void to_json(nlohmann::json& j, const TrainerConfig<TaskConfig>& c) {
  j = c.task;
  const nlohmann::json parts[] = {c.merge, c.optimiser, c.run};
  for (const nlohmann::json& part : parts)
    for (auto entry = part.begin(); entry != part.end(); ++entry) j[entry.key()] = entry.value();
}

/// Reads the keys a JSON object sets over `c`; an unknown key or a value of the wrong type is an error naming it.
template <class TaskConfig>
void from_json_checked(const nlohmann::json& j, TrainerConfig<TaskConfig>& c, const std::string& source) {
  if (!j.is_object()) throw config_error(source + ": expected a JSON object of options");
  nlohmann::json known;
  to_json(known, c);
  for (auto entry = j.begin(); entry != j.end(); ++entry) {
    const std::string& key = entry.key();
    const nlohmann::json& value = entry.value();
    if (!known.contains(key)) throw config_error(source + ": unknown option '" + key + "'");
    if (known[key].type() != value.type() &&
        !(known[key].is_number() && value.is_number() && !(known[key].is_number_unsigned() && value.is_number_float())))
      throw config_error(source + ": option '" + key + "' expects a value like " + known[key].dump() + ", given " + value.dump());
    if (known[key].is_number_unsigned() && value.is_number_integer() && value.get<std::int64_t>() < 0)
      throw config_error(source + ": option '" + key + "' expects a count >= 0, given " + value.dump());
    known[key] = value;
  }
  known.get_to(c.task);
  known.get_to(c.merge);
  known.get_to(c.optimiser);
  known.get_to(c.run);
}

/// Throws config_error "option --<option>: expected <expected>, given <given>".
[[noreturn]] inline void option_error(const std::string& option, const std::string& expected, const std::string& given) {
  throw config_error("option --" + option + ": expected " + expected + ", given " + given);
}

/// A task's routing choices: each name with what it means, for --help and the check.
struct RoutingChoices {
  std::vector<std::pair<std::string, std::string>> choices;
  std::string names() const {
    std::string out;
    for (std::size_t i = 0; i < choices.size(); ++i)
      out += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i].first;
    return out;
  }
  bool contains(const std::string& name) const {
    for (const auto& c : choices)
      if (c.first == name) return true;
    return false;
  }
};

/// The checks of the shared parts: the policy and its options, the optimiser, the run.
inline void validate_shared(const MergeConfig& m, const OptimiserConfig& o, const RunConfig& r, const RoutingChoices& routings) {
  if (r.host_threads != "auto" && r.host_threads != "all" && r.host_threads != "all-but-one")
    option_error("host-threads", "auto, all or all-but-one", "'" + r.host_threads + "'");
  if (!(r.bucket_mb >= 0 && r.bucket_mb <= 1e6)) option_error("bucket-mb", "0 to 1e6 MB", std::to_string(r.bucket_mb));
  const PolicyRule& rule = policy_rule(m.policy);  // names every policy when the name is unknown
  if (!routings.contains(m.routing)) option_error("routing", routings.names(), "'" + m.routing + "'");
  if (rule.experts) {
    if (m.experts < 2 || m.experts > 64) option_error("experts", "2 to 64", std::to_string(m.experts));
    if (m.top_k > m.experts) option_error("top-k", "at most --experts " + std::to_string(m.experts), std::to_string(m.top_k));
  }
  if (!(m.alpha >= 0)) option_error("alpha", "a step >= 0 (0: the policy's default)", std::to_string(m.alpha));
  if (rule.alpha_one_cancels_base && m.alpha == 1)
    option_error("alpha", "a step other than 1 for " + rule.name + " (with router scores summing to one, alpha = 1 "
                 "cancels the base: the merge is the plain average of the experts)", "1");
  if (!(m.density > 0 && m.density <= 1)) option_error("density", "a fraction in (0, 1]", std::to_string(m.density));
  if (!(m.drop >= 0 && m.drop < 1)) option_error("drop", "a probability in [0, 1)", std::to_string(m.drop));
  if (m.rank == 0) option_error("rank", "at least 1", "0");
  if (o.batch == 0) option_error("batch", "at least 1", "0");
  if (o.steps == 0) option_error("steps", "at least 1", "0");
  if (!(o.lr > 0)) option_error("lr", "a positive learning rate", std::to_string(o.lr));
  if (r.eval_every == 0 || r.log_every == 0) option_error("eval-every", "intervals of at least 1 step", "0");
  if (r.stop_after >= o.steps)
    option_error("stop-after", "a step before --steps " + std::to_string(o.steps) + " (or 0)", std::to_string(r.stop_after));
  if (!r.resume.empty() && !r.upcycle_from.empty())
    option_error("upcycle-from", "no --resume at the same time (a resumed run is already upcycled)", r.upcycle_from);
}

/// Reads `--config FILE` (when argv names one) into `c` before the options are declared, so its values become the
/// defaults the command line overrides.
template <class TaskConfig>
void read_config_file(int argc, char** argv, TrainerConfig<TaskConfig>& c) {
  std::string file;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--config") file = argv[i + 1];
  if (file.empty()) return;
  std::ifstream in(file);
  if (!in) throw config_error("--config: cannot open '" + file + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw config_error("--config '" + file + "': not valid JSON: " + e.what());
  }
  from_json_checked(j, c, "--config '" + file + "'");
}

/// The shared parts' options, in groups "merging", "optimisation" and "reporting". `items` names what a batch
/// holds ("sequences", "images").
inline void add_shared_options(CLI::App& app, MergeConfig& m, OptimiserConfig& o, RunConfig& r, const RoutingChoices& routings,
                               const std::string& items, const std::string& dump_contents) {
  std::string policies, routing_help;
  for (const PolicyRule& p : policy_rules()) policies += "\n    " + p.name + ": " + p.help;
  for (const auto& [name, meaning] : routings.choices) routing_help += "\n    " + name + ": " + meaning;
  auto* g = app.add_option_group("merging");
  g->add_option("--policy", m.policy, "how each MLP linear merges its experts:" + policies)->capture_default_str();
  g->add_option("--experts", m.experts, "experts per merged linear (n; the base is extra where the policy has one)")->capture_default_str();
  g->add_option("--top-k", m.top_k, "experts each router keeps (0: the policy's default, every expert; smoe: 2)")->capture_default_str();
  g->add_option("--routing", m.routing, "which tokens share a routing decision:" + routing_help)->capture_default_str();
  g->add_option("--segment", m.segment, "segment length T where --routing cuts sequences into segments")->capture_default_str();
  g->add_option("--alpha", m.alpha, "step along the merged deltas (0: the policy's default, 0.5 for domain, else 1; smoe "
                                    "and smear merge without a base and ignore it)")->capture_default_str();
  g->add_option("--density", m.density, "TIES: fraction of each delta kept by the trim")->capture_default_str();
  g->add_option("--drop", m.drop, "DARE: probability of dropping a delta entry")->capture_default_str();
  g->add_option("--rank", m.rank, "curvature transform rank r (CA variants, dynamic)")->capture_default_str();
  g->add_option("--gamma", m.gamma, "dynamic: propagation step of the base through the layers")->capture_default_str();
  g->add_option("--aux", m.aux, "coefficient of the routers' balancing loss (cv^2 of importance and load)")->capture_default_str();
  g->add_option("--router-noise", m.router_noise, "learned Gaussian noise on the router logits in training")->capture_default_str();
  auto* o_group = app.add_option_group("optimisation");
  o_group->add_option("--steps", o.steps, "optimiser steps")->capture_default_str();
  o_group->add_option("--batch", o.batch, items + " per step")->capture_default_str();
  o_group->add_option("--lr", o.lr, "peak AdamW learning rate")->capture_default_str();
  o_group->add_option("--warmup", o.warmup, "steps of linear warm-up, then linear decay to --final-lr-fraction")->capture_default_str();
  o_group->add_option("--final-lr-fraction", o.final_lr_fraction, "learning rate at the last step, as a fraction of --lr")->capture_default_str();
  o_group->add_option("--weight-decay", o.weight_decay, "AdamW weight decay on matrices")->capture_default_str();
  o_group->add_option("--clip", o.clip, "global gradient-norm bound (0: none)")->capture_default_str();
  o_group->add_option("--seed", o.seed, "seed of the initialisation, the batches, router noise and random masks")->capture_default_str();
  auto* r_group = app.add_option_group("reporting");
  r_group->add_option("--log-every", r.log_every, "steps between progress lines")->capture_default_str();
  r_group->add_option("--eval-every", r.eval_every, "steps between validation passes")->capture_default_str();
  r_group->add_option("--eval-batches", r.eval_batches, "validation batches per pass (0: the whole split)")->capture_default_str();
  r_group->add_option("--checkpoint-every", r.checkpoint_every, "steps between checkpoints (0: only the last)")->capture_default_str();
  r_group->add_option("--out", r.out, "run directory: config.json, curves.csv, curves.png, checkpoint.safetensors")->capture_default_str();
  r_group->add_option("--stop-after", r.stop_after, "stop after this step with a checkpoint, as an interrupted run would "
                                                    "(0: run to --steps); --resume continues it")->capture_default_str();
  r_group->add_option("--resume", r.resume, "continue from this checkpoint (same configuration; reaches the same numbers "
                                            "as an uninterrupted run)");
  r_group->add_option("--upcycle-from", r.upcycle_from, "start every expert and base from this dense checkpoint's MLP "
                                                        "weights (and the rest of the model from it too)");
  r_group->add_option("--dump-step", r.dump_step, "write the next step's " + dump_contents + " to this safetensors file and stop");
  r_group->add_option("--plot", r.plot, "write curves.png with gnuplot")->capture_default_str();
  r_group->add_option("--profile", r.profile, "time every kernel of the training steps and report where a step's time "
                                              "goes by kernel category (printed, and kernels.csv in the run directory)")
      ->capture_default_str();
  r_group->add_flag("--plan", r.plan, "print what the run would be (its parameters, model FLOPs, and the gradient "
                                     "bytes each process would send a step) and stop without training");
  r_group->add_flag("--shard-optimizer", r.shard_optimizer, "with several processes, each keeps the AdamW moments of "
                                                           "its shard of the parameters alone and updates that shard, "
                                                           "then they exchange the updated shards (ZeRO stage 1: the "
                                                           "same numbers, the moments' memory divided by the processes)");
  r_group->add_option("--bucket-mb", r.bucket_mb, "with several processes, the gradients are sent in buckets of at "
                                                  "least this many MB as the backward finishes them, while it goes on "
                                                  "with the earlier blocks (0: each block's apart; the numbers are the "
                                                  "same for any size)")
      ->capture_default_str();
  r_group->add_option("--host-threads", r.host_threads, "threads of an OpenMP build a step runs on: all, all-but-one, or "
                                                        "auto, whichever is faster while another process holds a core "
                                                        "(the numbers are the same either way)")
      ->capture_default_str();
}

/// Runs CLI11 over argv; false (after printing) for --help.
inline bool parse_options(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::ParseError& e) {
    throw config_error(e.what());
  }
  return true;
}

}  // namespace camex::examples
