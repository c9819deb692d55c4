#pragma once
// What the fuzz targets share: the readers take paths, so each input is written to files in a scratch directory of
// the process (one directory, rewritten by every input) and the real reader opens them. An input that stands for
// several files is cut into pieces at the line "#file" (the seeds show the form).

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

namespace camex::fuzz {

/// The process's scratch directory, emptied of what an earlier input left; removed when the process ends.
inline std::filesystem::path fresh_scratch() {
  struct Scratch {
    std::filesystem::path dir = std::filesystem::temp_directory_path() / ("camex-fuzz-" + std::to_string(::getpid()));
    ~Scratch() {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  };
  static const Scratch scratch;
  std::filesystem::remove_all(scratch.dir);
  std::filesystem::create_directories(scratch.dir);
  return scratch.dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

/// The input cut at every line "#file" (the separator's newlines go with it).
inline std::vector<std::string_view> pieces(const std::uint8_t* data, std::size_t size) {
  constexpr std::string_view separator = "\n#file\n";
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> out;
  std::size_t begin = 0;
  for (std::size_t at = input.find(separator); at != std::string_view::npos; at = input.find(separator, begin)) {
    out.push_back(input.substr(begin, at - begin));
    begin = at + separator.size();
  }
  out.push_back(input.substr(begin));
  return out;
}

}  // namespace camex::fuzz
