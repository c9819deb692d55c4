#pragma once
// IDX files (the format of MNIST and Fashion-MNIST), gzip-compressed or not: a magic number of two zero bytes, the
// element type (0x08: unsigned bytes, the only one these datasets use) and the number of dimensions; each dimension
// as a big-endian 32-bit count; then the elements, row-major. zlib reads both forms through one path (gzread passes
// an uncompressed file through). Every field is checked against the file, and what is wrong is named with the
// file: a bad magic number, an element type other than bytes, no or too many dimensions, a dimension of 0, a
// truncated or corrupt file, bytes after the last element.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "common/io/data_error.hpp"

namespace camex::examples {

struct IdxArray {
  std::vector<std::size_t> dims;
  std::vector<std::uint8_t> data;  ///< row-major, dims' product entries
};

namespace detail_idx {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

/// A part of the file, by its uncompressed bytes, for the messages.
struct Part {
  std::string what;
  std::size_t begin, end;
};

/// Reads exactly `bytes` bytes of `part` (in chunks gzread can take), from its uncompressed byte `offset` on, or
/// throws naming the part.
inline void read_exactly(gzFile f, const std::filesystem::path& path, void* out, std::size_t bytes, std::size_t offset,
                         const Part& part) {
  auto* at = static_cast<unsigned char*>(out);
  std::size_t done = 0;
  while (done < bytes) {
    const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(bytes - done, 1u << 30));
    const int got = gzread(f, at + done, chunk);
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(f, &code);
      throw data_error("'" + path.string() + "': corrupt compressed data while reading " + part.what + " (zlib: " + message + ")");
    }
    if (got == 0) {
      int code = 0;
      const char* message = gzerror(f, &code);
      throw data_error("'" + path.string() + "': truncated: " + part.what + " needs bytes " + std::to_string(part.begin) + ".." +
                       std::to_string(part.end) + " (uncompressed), the file ends at byte " +
                       std::to_string(offset + done) + (code != Z_OK && code != Z_BUF_ERROR ? std::string(" (zlib: ") + message + ")" : ""));
    }
    done += static_cast<std::size_t>(got);
  }
}

/// Reads the whole of `part`.
inline void read_part(gzFile f, const std::filesystem::path& path, void* out, const Part& part) {
  read_exactly(f, path, out, part.end - part.begin, part.begin, part);
}

}  // namespace detail_idx

/// The array in `path`. `expected_dims` (when not 0) is the number of dimensions the caller needs.
inline IdxArray read_idx(const std::filesystem::path& path, std::size_t expected_dims = 0) {
  if (!std::filesystem::exists(path)) throw data_error("'" + path.string() + "' does not exist");
  detail_idx::GzHandle file(gzopen(path.c_str(), "rb"));
  if (!file) throw data_error("cannot open '" + path.string() + "' for reading");
  std::array<std::uint8_t, 4> magic{};
  detail_idx::read_part(file.get(), path, magic.data(), {"the magic number", 0, 4});
  if (magic[0] != 0 || magic[1] != 0)
    throw data_error("'" + path.string() + "' is not an IDX file: its first two bytes are " + std::to_string(magic[0]) + " " +
                     std::to_string(magic[1]) + ", expected 0 0");
  if (magic[2] != 0x08)
    throw data_error("'" + path.string() + "' holds IDX elements of type 0x" + [&] {
      char hex[8];
      std::snprintf(hex, sizeof hex, "%02x", magic[2]);
      return std::string(hex);
    }() + ", expected 0x08 (unsigned bytes)");
  const std::size_t ndims = magic[3];
  if (ndims == 0 || ndims > 4)
    throw data_error("'" + path.string() + "' declares " + std::to_string(ndims) + " dimensions, expected 1 to 4");
  if (expected_dims != 0 && ndims != expected_dims)
    throw data_error("'" + path.string() + "' holds an array of " + std::to_string(ndims) + " dimensions, expected " +
                     std::to_string(expected_dims));
  IdxArray out;
  std::size_t count = 1;
  for (std::size_t d = 0; d < ndims; ++d) {
    std::array<std::uint8_t, 4> b{};
    detail_idx::read_part(file.get(), path, b.data(), {"dimension " + std::to_string(d), 4 + 4 * d, 8 + 4 * d});
    const std::size_t extent = (std::size_t{b[0]} << 24) | (std::size_t{b[1]} << 16) | (std::size_t{b[2]} << 8) | b[3];
    if (extent == 0) throw data_error("'" + path.string() + "': dimension " + std::to_string(d) + " is 0");
    out.dims.push_back(extent);
    count *= extent;
    if (count > (std::size_t{1} << 34))
      throw data_error("'" + path.string() + "' declares more than 2^34 elements: not a dataset these trainers read");
  }
  // The elements arrive in pieces and the array grows with them, so a few bytes declaring 2^34 elements are refused
  // as truncated instead of allocating 16 GiB first.
  const std::size_t header = 4 + 4 * ndims;
  constexpr std::size_t piece = std::size_t{1} << 24;
  out.data.reserve(std::min(count, piece));
  const detail_idx::Part elements{std::to_string(count) + " elements", header, header + count};
  while (out.data.size() < count) {
    const std::size_t at = out.data.size(), bytes = std::min(piece, count - at);
    out.data.resize(at + bytes);
    detail_idx::read_exactly(file.get(), path, out.data.data() + at, bytes, header + at, elements);
  }
  unsigned char extra = 0;
  const int more = gzread(file.get(), &extra, 1);
  if (more != 0) {
    int code = 0;
    const char* message = gzerror(file.get(), &code);
    throw data_error("'" + path.string() + "': " +
                     (more < 0 ? std::string("corrupt compressed data after the elements (zlib: ") + message + ")"
                               : "bytes after the " + std::to_string(count) + " elements its dimensions declare"));
  }
  return out;
}

}  // namespace camex::examples
