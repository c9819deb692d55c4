// Runs a fuzz target over files, as libFuzzer does when given them, for a build without libFuzzer: the seed corpus
// and every input a fuzzing run found become tests of the normal and the sanitizer builds.
//   fuzz_replay_<target> DIR_OR_FILE...
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

void replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::printf("%s (%zu bytes)\n", file.c_str(), bytes.size());
  std::fflush(stdout);
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t inputs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path given(argv[i]);
    if (!std::filesystem::exists(given)) {
      std::fprintf(stderr, "error: '%s' does not exist (expected a file or a directory of inputs)\n", argv[i]);
      return 1;
    }
    if (std::filesystem::is_directory(given)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::recursive_directory_iterator(given))
        if (entry.is_regular_file()) files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const auto& file : files) replay(file), ++inputs;
    } else {
      replay(given), ++inputs;
    }
  }
  if (inputs == 0) {
    std::fprintf(stderr, "error: no inputs given (expected files or directories of inputs)\n");
    return 1;
  }
  std::printf("%zu inputs, each read or refused with the reader's error\n", inputs);
  return 0;
}
