// Fuzz target: a cached tokenizer (text/tokenizer.hpp): the input's first piece is the checksum file, the second
// (after a "#file" line) the model's bytes. A model its checksum vouches for is loaded by sentencepiece and encodes
// and decodes a line; any input is trusted and used, or refused (to be trained again) with a reason, or fails to
// load with data_error. A mutated model almost never matches a checksum, so a first piece reading "fnv1a" stands
// for the model's own: that way the loading of damaged models is fuzzed too, as a checksum written by hand or by
// another program would let one through.
#include "common/text/tokenizer.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto pieces = camex::fuzz::pieces(data, size);
  const auto dir = camex::fuzz::fresh_scratch();
  const auto model = dir / "bpe.model", checksum = dir / "bpe.model.fnv1a";
  const std::string_view model_bytes = pieces.size() > 1 ? pieces[1] : std::string_view{};
  if (pieces.size() > 1) camex::fuzz::write_file(model, model_bytes);
  if (pieces.front() == "fnv1a") {
    std::ostringstream own;
    own << std::hex << fnv1a(std::string(model_bytes)) << '\n';
    camex::fuzz::write_file(checksum, own.str());
  } else {
    camex::fuzz::write_file(checksum, pieces.front());
  }
  if (!Tokenizer::cache_fault(model, checksum).empty()) return 0;
  try {
    const Tokenizer tokenizer(model);
    const auto ids = tokenizer.encode("The jury said it did find that many of Georgia's registration laws are outmoded.\n");
    static_cast<void>(tokenizer.decode(ids));
  } catch (const data_error&) {
  }
  return 0;
}
