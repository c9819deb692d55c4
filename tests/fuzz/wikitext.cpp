// Fuzz target: the WikiText reader (text/corpus.hpp). The input's first three pieces (cut at "#file" lines) become
// wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens; a piece that is missing leaves its file out. Any input
// is read or refused with data_error.
#include "common/text/corpus.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto pieces = camex::fuzz::pieces(data, size);
  const auto dir = camex::fuzz::fresh_scratch();
  const char* names[] = {"wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"};
  for (std::size_t i = 0; i < 3 && i < pieces.size(); ++i) camex::fuzz::write_file(dir / names[i], pieces[i]);
  try {
    const CorpusSplits splits = load_wikitext(dir);
    for (const std::string* split : {&splits.train, &splits.valid, &splits.test})
      if (split->empty() || split->back() != '\n') __builtin_trap();
  } catch (const data_error&) {
  }
  return 0;
}
