#pragma once
// safetensors files (the format of Hugging Face's safetensors library): an 8-byte little-endian header length,
// a JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {string: string}}, then
// the tensors' bytes. Written atomically (io/atomic_file.hpp): a crash leaves the old file or the new one, never
// half of one. Reading checks every header field
// and offset against the file and says what is wrong where.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "atomic_file.hpp"

namespace camex::examples {

class checkpoint_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HostTensor {
  std::string name;
  std::string dtype;  ///< "F32" or "F64"
  std::vector<std::size_t> shape;
  std::vector<unsigned char> bytes;
};

inline std::size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "F64") return 8;
  if (dtype == "I32") return 4;
  throw checkpoint_error("unsupported safetensors dtype '" + dtype + "' (expected F32, F64 or I32)");
}

template <class T>
constexpr const char* dtype_of() {
  if constexpr (sizeof(T) == 8) return "F64";
  else return "F32";
}

/// Writes `tensors` and `metadata` to `path` atomically.
inline void write_safetensors(const std::filesystem::path& path, const std::vector<HostTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& t : tensors) {
    std::size_t count = 1;
    for (const std::size_t e : t.shape) count *= e;
    if (count * dtype_size(t.dtype) != t.bytes.size())
      throw checkpoint_error("tensor '" + t.name + "': " + std::to_string(t.bytes.size()) + " bytes for a " + t.dtype +
                             " tensor of " + std::to_string(count) + " entries");
    if (header.contains(t.name)) throw checkpoint_error("tensor '" + t.name + "' appears twice");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the format pads the header to 8 bytes with spaces
  write_atomically(path, [&](std::ofstream& out) {
    std::uint64_t length = text.size();
    unsigned char prefix[8];
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(length >> (8 * i));
    out.write(reinterpret_cast<const char*>(prefix), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : tensors) out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
  });
}

/// A safetensors file read whole and checked.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw checkpoint_error("cannot open the checkpoint '" + path.string() + "'");
    bytes_.assign(std::istreambuf_iterator<char>(in), {});
    if (bytes_.size() < 8) fail("is " + std::to_string(bytes_.size()) + " bytes long: too short for a safetensors header");
    std::uint64_t length = 0;
    for (int i = 0; i < 8; ++i) length |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes_[i])) << (8 * i);
    if (length > bytes_.size() - 8)
      fail("announces a header of " + std::to_string(length) + " bytes but holds " + std::to_string(bytes_.size() - 8) + " after the length");
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + static_cast<std::ptrdiff_t>(length));
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("has a header that is not JSON: ") + e.what());
    }
    if (!header.is_object()) fail("has a header that is not a JSON object");
    data_begin_ = 8 + length;
    const std::size_t data_size = bytes_.size() - data_begin_;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) fail("has a __metadata__ that is not an object");
        for (const auto& [k, v] : entry.items()) {
          if (!v.is_string()) fail("has metadata '" + k + "' that is not a string");
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
        fail("tensor '" + name + "' lacks dtype, shape or data_offsets");
      Entry e;
      try {
        e.dtype = entry["dtype"].get<std::string>();
        e.shape = entry["shape"].get<std::vector<std::size_t>>();
        const auto offsets = entry["data_offsets"].get<std::vector<std::size_t>>();
        if (offsets.size() != 2) fail("tensor '" + name + "' has data_offsets of " + std::to_string(offsets.size()) + " numbers, expected 2");
        e.begin = offsets[0];
        e.end = offsets[1];
      } catch (const nlohmann::json::exception& ex) {
        fail("tensor '" + name + "' has a malformed entry: " + ex.what());
      }
      std::size_t element = 0;
      try {
        element = dtype_size(e.dtype);
      } catch (const checkpoint_error& ex) {
        fail("tensor '" + name + "': " + ex.what());
      }
      // A shape whose byte count overflows would otherwise wrap around to a small number that the offsets can match.
      std::size_t needed = element;
      for (const std::size_t d : e.shape)
        if (__builtin_mul_overflow(needed, d, &needed))
          fail("tensor '" + name + "' has a shape " + entry["shape"].dump() + " of more bytes than a size_t counts");
      if (e.begin > e.end || e.end > data_size)
        fail("tensor '" + name + "' has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
             "] outside the " + std::to_string(data_size) + " data bytes");
      if (e.end - e.begin != needed)
        fail("tensor '" + name + "' spans " + std::to_string(e.end - e.begin) + " bytes, but a " + e.dtype + " tensor of shape " +
             entry["shape"].dump() + " needs " + std::to_string(needed));
      entries_[name] = e;
    }
  }

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::string metadata(const std::string& key) const {
    const auto it = metadata_.find(key);
    if (it == metadata_.end()) fail("has no metadata '" + key + "'");
    return it->second;
  }
  bool has_metadata(const std::string& key) const { return metadata_.count(key) != 0; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  /// What the header says of tensor `name`: its dtype, shape and byte count.
  struct TensorInfo {
    std::string dtype;
    std::vector<std::size_t> shape;
    std::size_t bytes = 0;
  };
  TensorInfo info(const std::string& name) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail("has no tensor '" + name + "'");
    return {it->second.dtype, it->second.shape, it->second.end - it->second.begin};
  }

  /// Tensor `name`, required to be `dtype` of `shape`.
  const unsigned char* tensor(const std::string& name, const std::string& dtype, const std::vector<std::size_t>& shape) const {
    const auto it = entries_.find(name);
    if (it == entries_.end()) fail("has no tensor '" + name + "'");
    const Entry& e = it->second;
    if (e.dtype != dtype || e.shape != shape)
      fail("holds '" + name + "' as " + e.dtype + " " + nlohmann::json(e.shape).dump() + ", expected " + dtype + " " +
           nlohmann::json(shape).dump() + " (a checkpoint of another model or precision?)");
    return reinterpret_cast<const unsigned char*>(bytes_.data()) + data_begin_ + e.begin;
  }

 private:
  struct Entry {
    std::string dtype;
    std::vector<std::size_t> shape;
    std::size_t begin = 0, end = 0;
  };
  [[noreturn]] void fail(const std::string& what) const { throw checkpoint_error("checkpoint '" + path_.string() + "' " + what); }

  std::filesystem::path path_;
  std::vector<char> bytes_;
  std::size_t data_begin_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace camex::examples
