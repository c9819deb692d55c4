#pragma once
// Files replaced whole or not at all: written to a temporary name beside the target, flushed and synced to disk,
// then renamed over it (rename is atomic within a file system). A write that fails (a full disk, a file-size limit)
// removes the temporary, leaves the target as it was, and says why.

#include <cerrno>
#include <cstdio>
#include <cstring>
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

/// Writes `path` through `write(stream)` atomically, through the temporary `path`.tmp, or `temporary` where given
/// (writers that may run at once, other processes writing the same file, each take their own). Throws file_error,
/// with the system's reason, when the temporary cannot be opened, written, synced or renamed; `path` is then
/// untouched and the temporary gone.
inline void write_atomically(const std::filesystem::path& path, const std::function<void(std::ofstream&)>& write,
                             const std::filesystem::path& temporary_name = {}) {
  const std::filesystem::path temporary = temporary_name.empty() ? std::filesystem::path(path.string() + ".tmp") : temporary_name;
  const auto fail = [&](const std::string& what, int error) {
    std::error_code ignored;
    std::filesystem::remove(temporary, ignored);
    throw file_error(what + ": " + std::strerror(error != 0 ? error : EIO) + "; '" + path.string() + "' is left as it was");
  };
  {
    errno = 0;
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot open '" + temporary.string() + "' for writing", errno);
    try {
      write(out);
    } catch (...) {
      std::error_code ignored;
      std::filesystem::remove(temporary, ignored);
      throw;
    }
    out.flush();
    if (!out) fail("writing '" + temporary.string() + "' failed", errno);
    out.close();
    if (!out) fail("closing '" + temporary.string() + "' failed", errno);
  }
  const int fd = ::open(temporary.c_str(), O_RDONLY);
  if (fd < 0) fail("cannot reopen '" + temporary.string() + "' to sync it", errno);
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    fail("syncing '" + temporary.string() + "' failed", error);
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec) fail("cannot rename '" + temporary.string() + "' to '" + path.string() + "'", ec.value());
}

inline void write_text_atomically(const std::filesystem::path& path, const std::string& text,
                                  const std::filesystem::path& temporary_name = {}) {
  write_atomically(path, [&](std::ofstream& out) { out << text; }, temporary_name);
}

/// A temporary name beside `path` that no other process writes: for files several processes may write at once.
inline std::filesystem::path process_temporary(const std::filesystem::path& path) {
  return path.string() + ".tmp." + std::to_string(::getpid());
}

}  // namespace camex::examples
