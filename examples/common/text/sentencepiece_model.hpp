#pragma once
// What sentencepiece takes on trust in a model file. Its loader checks the pieces, but a model's normalisation
// tables (the precompiled character map of the normaliser and of the denormaliser: a darts-clone double-array trie
// followed by the replacement strings) are used as read: a trie whose offsets leave the array, whose leaves point
// past the strings, or that matches more than 32 prefixes of one input makes Encode or Decode read outside the
// model (found by fuzzing, tests/fuzz/corpus/tokenizer_cache). sentencepiece_model_fault walks the map the way
// sentencepiece's lookups do, from every node with every byte, and names the first fault; a model sentencepiece
// itself wrote passes.
//
// The model is read from its serialised protobuf (sentencepiece_model.proto: field 3 is the normaliser spec, field
// 5 the denormaliser spec, and field 2 of a spec its precompiled map); the wire format is decoded here because
// Debian's libsentencepiece-dev does not install the generated message classes.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace camex::examples {

namespace sentencepiece_model_detail {

/// The payloads of the length-delimited fields numbered `field` in a protobuf message, in order; nullopt when the
/// bytes are not a well-formed message (groups, which this schema never writes, count as malformed).
inline std::optional<std::vector<std::string_view>> length_delimited_fields(std::string_view message, std::uint32_t field) {
  std::vector<std::string_view> found;
  std::size_t at = 0;
  const auto varint = [&](std::uint64_t& value) {
    value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at == message.size()) return false;
      const auto byte = static_cast<unsigned char>(message[at++]);
      value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return true;
    }
    return false;
  };
  while (at < message.size()) {
    std::uint64_t key = 0, length = 0;
    if (!varint(key)) return std::nullopt;
    switch (key & 7) {
      case 0:
        if (!varint(length)) return std::nullopt;
        break;
      case 1:
        if (message.size() - at < 8) return std::nullopt;
        at += 8;
        break;
      case 5:
        if (message.size() - at < 4) return std::nullopt;
        at += 4;
        break;
      case 2:
        if (!varint(length) || length > message.size() - at) return std::nullopt;
        if ((key >> 3) == field) found.push_back(message.substr(at, static_cast<std::size_t>(length)));
        at += static_cast<std::size_t>(length);
        break;
      default:
        return std::nullopt;
    }
  }
  return found;
}

/// Why sentencepiece cannot safely look text up in `charsmap` ("" when it can; an empty map means no normalisation).
inline std::string charsmap_fault(std::string_view charsmap) {
  if (charsmap.empty()) return "";
  if (charsmap.size() <= 4) return "holds " + std::to_string(charsmap.size()) + " bytes, too few for its header";
  // sentencepiece reads the header and the units in the host's byte order (it copies the one and casts the other).
  std::uint32_t trie_bytes = 0;
  std::memcpy(&trie_bytes, charsmap.data(), 4);
  if (trie_bytes == 0 || trie_bytes % 4 != 0 || trie_bytes >= charsmap.size() - 4)
    return "declares a " + std::to_string(trie_bytes) + "-byte trie in " + std::to_string(charsmap.size() - 4) +
           " bytes: expected a positive multiple of 4 that leaves room for the replacements";
  const std::size_t units = trie_bytes / 4;
  const std::string_view replacements = charsmap.substr(4 + trie_bytes);
  if (replacements.back() != '\0') return "does not end its replacement strings with a NUL";
  std::vector<std::uint32_t> trie(units);
  std::memcpy(trie.data(), charsmap.data() + 4, trie_bytes);
  const auto unit = [&](std::size_t i) { return trie[i]; };
  const auto offset = [](std::uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
  const auto has_leaf = [](std::uint32_t u) { return ((u >> 8) & 1u) != 0; };
  const auto label = [](std::uint32_t u) { return u & ((1u << 31) | 0xffu); };
  // The trie is a DAG (darts-clone shares equal subtrees): a node is named by the position its children's bytes
  // are xored into, and the most matches a lookup can collect below it is the longest path counted in leaves.
  constexpr std::uint8_t most_matches = 32;  // sentencepiece keeps one lookup's matches in a 32-entry array
  enum : std::uint8_t { unseen, open, closed };
  std::vector<std::uint8_t> state(units, unseen), matches_below(units, 0);
  struct Frame {
    std::size_t base;
    std::size_t next_byte;
    std::uint8_t matches;     // the most found below so far
    std::uint8_t edge_match;  // 1 when the edge into this node ends a key
  };
  const std::size_t root = offset(unit(0));
  if (root >= units) return "puts its root's children at unit " + std::to_string(root) + " of " + std::to_string(units);
  std::vector<Frame> path{{root, 0, 0, 0}};
  state[root] = open;
  while (!path.empty()) {
    Frame& node = path.back();
    if (node.next_byte >= 256) {
      const Frame done = node;
      state[done.base] = closed;
      matches_below[done.base] = done.matches;
      path.pop_back();
      if (!path.empty()) {
        const auto found = static_cast<std::uint8_t>(done.edge_match + done.matches);
        if (found > most_matches) return "lets one input match more than 32 of its keys";
        if (found > path.back().matches) path.back().matches = found;
      }
      continue;
    }
    if (node.next_byte == 0 && (node.base | 0xffu) >= units) {
      std::size_t byte = 0;
      while ((node.base ^ byte) < units) ++byte;
      return "sends byte " + std::to_string(byte) + " to unit " + std::to_string(node.base ^ byte) + " of " + std::to_string(units);
    }
    std::size_t byte = node.next_byte;
    while (byte < 256 && label(unit(node.base ^ byte)) != byte) ++byte;
    node.next_byte = byte + 1;
    if (byte == 256) continue;
    const std::size_t child = node.base ^ byte;
    const std::uint32_t u = unit(child);
    const std::size_t base = child ^ offset(u);
    if (base >= units) return "sends a node's children to unit " + std::to_string(base) + " of " + std::to_string(units);
    const std::uint8_t edge_match = has_leaf(u) ? 1 : 0;
    if (edge_match) {
      const std::uint32_t value = unit(base) & 0x7fffffffu;
      if (value >= replacements.size())
        return "points at replacement byte " + std::to_string(value) + " of " + std::to_string(replacements.size());
    }
    if (state[base] == open) return "has a cycle through unit " + std::to_string(base);
    if (state[base] == closed) {
      const auto found = static_cast<std::uint8_t>(edge_match + matches_below[base]);
      if (found > most_matches) return "lets one input match more than 32 of its keys";
      if (found > node.matches) node.matches = found;
      continue;
    }
    state[base] = open;
    path.push_back({base, 0, 0, edge_match});  // invalidates `node`
  }
  return "";
}

}  // namespace sentencepiece_model_detail

/// Why the serialised sentencepiece model `model` would make sentencepiece read outside it ("" when it would not).
inline std::string sentencepiece_model_fault(std::string_view model) {
  using namespace sentencepiece_model_detail;
  for (const auto& [field, name] : {std::pair<std::uint32_t, const char*>{3, "normaliser"}, {5, "denormaliser"}}) {
    const auto specs = length_delimited_fields(model, field);
    if (!specs) return "the model is not a well-formed protobuf message";
    std::string_view charsmap;  // a message field given twice is merged: the last map wins
    for (const auto spec : *specs) {
      const auto maps = length_delimited_fields(spec, 2);
      if (!maps) return std::string("the ") + name + " spec is not a well-formed protobuf message";
      if (!maps->empty()) charsmap = maps->back();
    }
    if (const std::string fault = charsmap_fault(charsmap); !fault.empty())
      return std::string("the ") + name + "'s character map " + fault;
  }
  return "";
}

}  // namespace camex::examples
