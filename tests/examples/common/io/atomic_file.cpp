// Atomic files: a write that fails leaves the target as it was, takes its temporary away and says why, whether the
// disk refuses the bytes (here a file-size limit, RLIMIT_FSIZE, with SIGXFSZ ignored as the trainers ignore it:
// EFBIG, as a full disk gives ENOSPC), the writer throws, or the rename fails.
#include <boost/test/unit_test.hpp>

#include "common/io/atomic_file.hpp"

#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>

#include <sys/resource.h>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

fs::path temp_file(const std::string& name) {
  return fs::temp_directory_path() / ("camex-atomic-" + std::to_string(::getpid()) + "-" + name);
}

std::string contents(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The message of the file_error `call` throws ("" if it throws none).
std::string error_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const file_error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_write_past_a_file_size_limit_leaves_the_old_file) {
  const fs::path target = temp_file("limited");
  write_text_atomically(target, "the previous checkpoint");
  rlimit before{};
  BOOST_REQUIRE(::getrlimit(RLIMIT_FSIZE, &before) == 0);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = before;
  limited.rlim_cur = 4096;
  BOOST_REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
  const std::string message = error_of([&] { write_text_atomically(target, std::string(100000, 'x')); });
  ::setrlimit(RLIMIT_FSIZE, &before);
  std::signal(SIGXFSZ, previous_handler);
  BOOST_TEST(message.find(target.string() + ".tmp' failed: File too large") != std::string::npos, message);
  BOOST_TEST(message.find("writing '") == 0, message);
  BOOST_TEST(message.find(target.string() + "' is left as it was") != std::string::npos, message);
  BOOST_TEST(contents(target) == "the previous checkpoint");
  BOOST_TEST(!fs::exists(target.string() + ".tmp"));
  fs::remove(target);
}

BOOST_AUTO_TEST_CASE(a_writer_that_throws_leaves_the_old_file) {
  const fs::path target = temp_file("throws");
  write_text_atomically(target, "kept");
  BOOST_CHECK_THROW(write_atomically(target, [](std::ofstream& out) {
                      out << "half of it";
                      throw std::runtime_error("the serialiser gave up");
                    }),
                    std::runtime_error);
  BOOST_TEST(contents(target) == "kept");
  BOOST_TEST(!fs::exists(target.string() + ".tmp"));
  fs::remove(target);
}

// Writers in several processes at once (ranks training the same tokenizer into one cache) each use a temporary of
// their own: a rename never finds its temporary taken by another's.
BOOST_AUTO_TEST_CASE(a_process_temporary_is_this_process_s_own) {
  const fs::path target = temp_file("shared");
  const fs::path mine = process_temporary(target);
  BOOST_TEST(mine.string() == target.string() + ".tmp." + std::to_string(::getpid()));
  write_text_atomically(target, "first");
  std::ofstream(target.string() + ".tmp") << "another writer's half-written temporary";
  write_text_atomically(target, "second", mine);
  BOOST_TEST(contents(target) == "second");
  BOOST_TEST(!fs::exists(mine));
  BOOST_TEST(contents(target.string() + ".tmp") == "another writer's half-written temporary");  // not touched
  fs::remove(target.string() + ".tmp");
  fs::remove(target);
}

BOOST_AUTO_TEST_CASE(a_failed_rename_or_open_says_why) {
  // A directory with something in it cannot be replaced by a file.
  const fs::path directory = temp_file("directory");
  fs::create_directories(directory / "inside");
  const std::string renamed = error_of([&] { write_text_atomically(directory, "text"); });
  BOOST_TEST(renamed.find("cannot rename '") == 0, renamed);
  BOOST_TEST(renamed.find(directory.string() + ".tmp' to") != std::string::npos, renamed);
  BOOST_TEST(renamed.find("is left as it was") != std::string::npos, renamed);
  BOOST_TEST(fs::is_directory(directory / "inside"));
  BOOST_TEST(!fs::exists(directory.string() + ".tmp"));
  fs::remove_all(directory);
  const std::string opened = error_of([&] { write_text_atomically(temp_file("absent") / "x.txt", "text"); });
  BOOST_TEST(opened.find("cannot open") != std::string::npos, opened);
  BOOST_TEST(opened.find("No such file or directory") != std::string::npos, opened);
}
