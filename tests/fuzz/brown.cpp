// Fuzz target: the Brown corpus reader (text/corpus.hpp). The input's pieces (cut at "#file" lines) become the files
// ca01 .. ca10 of one category, cycling when there are fewer, so the split into train, valid and test is reached;
// the first piece alone goes through the tag stripping. Any input is read or refused with data_error.
#include "common/text/corpus.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto pieces = camex::fuzz::pieces(data, size);
  try {
    static_cast<void>(strip_brown_tags(std::string(pieces.front()), "ca01"));
  } catch (const data_error&) {
  }
  const auto dir = camex::fuzz::fresh_scratch();
  for (std::size_t i = 0; i < 10; ++i)
    camex::fuzz::write_file(dir / (i < 9 ? "ca0" + std::to_string(i + 1) : std::string("ca10")), pieces[i % pieces.size()]);
  try {
    const CorpusSplits splits = load_brown(dir);
    if (splits.train.empty() && splits.valid.empty() && splits.test.empty()) __builtin_trap();
  } catch (const data_error&) {
  }
  return 0;
}
