#pragma once
// Files replaced whole or not at all: written to a temporary name beside the target, flushed and synced to disk,
// then renamed over it (rename is atomic within a file system).

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>

#include <fcntl.h>
#include <unistd.h>

namespace camex::examples {

class file_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Writes `path` through `write(stream)` atomically.
inline void write_atomically(const std::filesystem::path& path, const std::function<void(std::ofstream&)>& write) {
  const std::filesystem::path temporary = path.string() + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw file_error("cannot open '" + temporary.string() + "' for writing");
    write(out);
    out.flush();
    if (!out) throw file_error("writing '" + temporary.string() + "' failed (disk full?)");
  }
  const int fd = ::open(temporary.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) throw file_error("cannot rename '" + temporary.string() + "' to '" + path.string() + "': " + ec.message());
}

inline void write_text_atomically(const std::filesystem::path& path, const std::string& text) {
  write_atomically(path, [&](std::ofstream& out) { out << text; });
}

}  // namespace camex::examples
