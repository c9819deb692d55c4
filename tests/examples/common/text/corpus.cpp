// The corpus loaders on small files this test writes: Brown tag stripping and the fixed split by file within each
// genre, WikiText's three files (and the .raw variant), and every error a bad path or file gets.
#include <boost/test/unit_test.hpp>

#include "common/text/corpus.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("camex-corpus-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  static inline int counter = 0;
};

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

void require_data_error(const std::function<void()>& call, std::initializer_list<std::string> fragments) {
  try {
    call();
  } catch (const data_error& e) {
    for (const auto& f : fragments) BOOST_TEST(std::string(e.what()).find(f) != std::string::npos, "'" << f << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected data_error");
}

}  // namespace

BOOST_AUTO_TEST_CASE(brown_tags_are_stripped) {
  BOOST_TEST(strip_brown_tags("\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\t1/2/cd cup/nn\n", "f") ==
             "The jury said \" no \" .\n1/2 cup\n");
  require_data_error([] { strip_brown_tags("The/at jury said/vbd\n", "ca01"); }, {"'ca01' line 1", "word/tag", "'jury'"});
  require_data_error([] { strip_brown_tags("ok/at\n/nn\n", "cb02"); }, {"'cb02' line 2"});
}

BOOST_AUTO_TEST_CASE(brown_split_is_by_file_within_each_genre) {
  TempDir dir;
  for (int i = 1; i <= 10; ++i) write(dir.path / ("ca" + std::string(i < 10 ? "0" : "") + std::to_string(i)), "\tword" + std::to_string(i) + "/nn\n");
  write(dir.path / "cb01", "\tother/nn\n");
  write(dir.path / "README", "not a corpus file");
  const auto splits = load_brown(dir.path);
  BOOST_TEST(splits.name == "brown");
  BOOST_TEST(splits.valid == "word9\n");
  BOOST_TEST(splits.test == "word10\n");
  BOOST_TEST(splits.train == "word1\nword2\nword3\nword4\nword5\nword6\nword7\nword8\nother\n");
}

BOOST_AUTO_TEST_CASE(brown_errors) {
  TempDir dir;
  require_data_error([&] { load_brown(dir.path / "missing"); }, {"does not exist", "scripts/setup"});
  write(dir.path / "file", "x");
  require_data_error([&] { load_brown(dir.path / "file"); }, {"is not a directory"});
  fs::create_directories(dir.path / "empty");
  require_data_error([&] { load_brown(dir.path / "empty"); }, {"holds no Brown corpus files"});
  fs::create_directories(dir.path / "few");
  write(dir.path / "few" / "ca01", "\ta/at\n");
  require_data_error([&] { load_brown(dir.path / "few"); }, {"holds 1 Brown files", "too few"});
  fs::create_directories(dir.path / "binary");
  write(dir.path / "binary" / "ca01", std::string("a/at\0b", 6));
  require_data_error([&] { load_brown(dir.path / "binary"); }, {"NUL byte", "ca01"});
}

BOOST_AUTO_TEST_CASE(wikitext_files_and_errors) {
  TempDir dir;
  write(dir.path / "wiki.train.tokens", " = Title = \n\n the cat sat . \n   \n");
  write(dir.path / "wiki.valid.tokens", " a dog ran . \n");
  write(dir.path / "wiki.test.raw", "raw text\n");
  const auto splits = load_wikitext(dir.path);
  BOOST_TEST(splits.train == "= Title =\nthe cat sat .\n");
  BOOST_TEST(splits.valid == "a dog ran .\n");
  BOOST_TEST(splits.test == "raw text\n");
  fs::remove(dir.path / "wiki.test.raw");
  require_data_error([&] { load_wikitext(dir.path); }, {"no wiki.test.tokens", "WikiText directory"});
  write(dir.path / "wiki.test.tokens", "\n  \n");
  require_data_error([&] { load_wikitext(dir.path); }, {"wiki.test.tokens", "holds no text"});
  require_data_error([&] { load_wikitext(dir.path / "nope"); }, {"does not exist"});
}
