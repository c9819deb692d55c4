// The checks of what sentencepiece takes on trust in a model: character maps built unit by unit (a sound one, and
// one of each fault), the protobuf walk, and a model sentencepiece trained, which passes; a trained model whose map
// is damaged and whose checksum vouches for it is refused by the tokenizer with data_error.
#include <boost/test/unit_test.hpp>

#include "common/text/sentencepiece_model.hpp"
#include "common/text/tokenizer.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace camex::examples;
using sentencepiece_model_detail::charsmap_fault;
namespace fs = std::filesystem;

namespace {

constexpr std::uint32_t no_label = 0x80000000u;  // a unit no byte matches (a leaf's, or an unused one)

std::uint32_t edge(unsigned char byte, std::uint32_t offset, bool leaf) { return byte | (leaf ? 1u << 8 : 0u) | (offset << 10); }

void put_le32(std::string& out, std::uint32_t v) {
  for (int b = 0; b < 4; ++b) out.push_back(static_cast<char>((v >> (8 * b)) & 0xff));
}

/// A character map: the units, then the replacement strings.
std::string charsmap(const std::vector<std::uint32_t>& units, const std::string& replacements) {
  std::string out;
  put_le32(out, static_cast<std::uint32_t>(4 * units.size()));
  for (const auto u : units) put_le32(out, u);
  return out + replacements;
}

/// A trie whose root's children start at unit 256 and whose keys are "a", "aa", ... (`keys` of them, a chain of
/// blocks), each replaced by the string at byte `value`.
std::vector<std::uint32_t> chain(std::size_t keys, std::uint32_t value) {
  std::vector<std::uint32_t> units(256 * (keys + 2), no_label);
  units[0] = 256u << 10;
  for (std::size_t k = 0; k < keys; ++k) {
    const std::size_t base = 256 * (k + 1), next = 256 * (k + 2), child = base ^ 'a';
    units[child] = edge('a', static_cast<std::uint32_t>(child ^ next), true);
    units[next] = no_label | value;
  }
  return units;
}

const std::string replacements("b\0cc\0", 5);

}  // namespace

BOOST_AUTO_TEST_CASE(sound_maps_pass) {
  BOOST_TEST(charsmap_fault("") == "");  // no normalisation
  BOOST_TEST(charsmap_fault(charsmap(chain(1, 0), replacements)) == "");
  BOOST_TEST(charsmap_fault(charsmap(chain(32, 2), replacements)) == "");
}

BOOST_AUTO_TEST_CASE(each_fault_of_a_map_is_named) {
  const auto fault_of = [](const std::string& map) { return charsmap_fault(map); };
  BOOST_TEST(fault_of("abc") == "holds 3 bytes, too few for its header");
  std::string oversized = charsmap(chain(1, 0), replacements);
  oversized[1] = 0x7f;  // the header declares more trie than the map holds
  BOOST_TEST(fault_of(oversized).find("-byte trie in") != std::string::npos, fault_of(oversized));
  BOOST_TEST(fault_of(charsmap(chain(1, 0), "b\0cc")).find("does not end its replacement strings with a NUL") == 0);
  BOOST_TEST(fault_of(charsmap(chain(1, 5), replacements)) == "points at replacement byte 5 of 5");
  BOOST_TEST(fault_of(charsmap(chain(33, 0), replacements)) == "lets one input match more than 32 of its keys");

  auto units = chain(1, 0);
  units[0] = 4096u << 10;
  BOOST_TEST(fault_of(charsmap(units, replacements)) == "puts its root's children at unit 4096 of 768");
  units = chain(1, 0);
  units.resize(600);  // the block of the node after "a" (units 512 to 767) runs past the end
  BOOST_TEST(fault_of(charsmap(units, replacements)) == "sends byte 88 to unit 600 of 600");
  units = chain(1, 0);
  units[256 ^ 'a'] = edge('a', (256 ^ 'a') ^ 5000u, false);
  BOOST_TEST(fault_of(charsmap(units, replacements)) == "sends a node's children to unit 5000 of 768");
  units = chain(1, 0);
  units[256 ^ 'a'] = edge('a', (256 ^ 'a') ^ 256u, false);  // back to the root
  BOOST_TEST(fault_of(charsmap(units, replacements)) == "has a cycle through unit 256");
}

BOOST_AUTO_TEST_CASE(the_protobuf_walk_finds_both_specs_and_refuses_malformed_messages) {
  const std::string map = charsmap(chain(1, 5), replacements);
  std::string spec = "\x0a\x04nfkc";  // field 1 (the name), then field 2 (the map)
  spec += '\x12';
  spec += static_cast<char>(0x80 | (map.size() & 0x7f));
  spec += static_cast<char>(map.size() >> 7);
  spec += map;
  const auto message = [](std::uint8_t field, const std::string& payload) {
    std::string out(1, static_cast<char>((field << 3) | 2));
    for (std::size_t n = payload.size(); ; n >>= 7) {
      out.push_back(static_cast<char>((n & 0x7f) | (n >= 0x80 ? 0x80 : 0)));
      if (n < 0x80) break;
    }
    return out + payload;
  };
  BOOST_TEST(sentencepiece_model_fault(message(3, spec)) == "the normaliser's character map points at replacement byte 5 of 5");
  BOOST_TEST(sentencepiece_model_fault(message(5, spec)) == "the denormaliser's character map points at replacement byte 5 of 5");
  // A spec given twice is merged: the second map (sound) replaces the first.
  BOOST_TEST(sentencepiece_model_fault(message(3, spec) + message(3, message(2, charsmap(chain(1, 0), replacements)))) == "");
  BOOST_TEST(sentencepiece_model_fault("\x08\x96\x01" + message(1, "piece")) == "");  // a varint, other fields
  BOOST_TEST(sentencepiece_model_fault(message(3, spec).substr(0, 20)) == "the model is not a well-formed protobuf message");
  BOOST_TEST(sentencepiece_model_fault(message(3, "\x12\x05" "ab")) == "the normaliser spec is not a well-formed protobuf message");
  BOOST_TEST(sentencepiece_model_fault("\x0b") == "the model is not a well-formed protobuf message");  // a group
}

// sentencepiece's own model passes; the same model with its root sent out of the map, under a checksum that
// vouches for it (as one written by hand or another program would), is refused before any text is encoded.
BOOST_AUTO_TEST_CASE(a_trained_model_passes_and_a_damaged_one_is_refused) {
  const fs::path cache = fs::temp_directory_path() / ("camex-sentencepiece-model-" + std::to_string(::getpid()));
  fs::remove_all(cache);
  std::string text;
  for (int i = 0; i < 200; ++i) text += "merge the experts of layer " + std::to_string(i % 7) + " .\n";
  const fs::path model = Tokenizer::trained_on(text, 40, cache).path();
  std::ifstream in(model, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  BOOST_TEST(sentencepiece_model_fault(bytes) == "");
  const auto specs = sentencepiece_model_detail::length_delimited_fields(bytes, 3);
  BOOST_REQUIRE(specs && specs->size() == 1u);
  const auto maps = sentencepiece_model_detail::length_delimited_fields(specs->front(), 2);
  BOOST_REQUIRE(maps && maps->size() == 1u && maps->front().size() > 8u);
  const std::size_t root = static_cast<std::size_t>(maps->front().data() - bytes.data()) + 4;
  bytes[root + 3] = static_cast<char>(0x7f);  // the root's offset: far past the trie
  const fs::path damaged = cache / "damaged.model";
  std::ofstream(damaged, std::ios::binary) << bytes;
  BOOST_CHECK_EXCEPTION(Tokenizer{damaged}, data_error, [&](const data_error& e) {
    const std::string what = e.what();
    BOOST_TEST_MESSAGE(what);
    return what.find("cannot load the tokenizer '" + damaged.string() + "': the normaliser's character map puts its root's children at unit") == 0;
  });
  fs::remove_all(cache);
}
