// The sentencepiece BPE tokenizer: trained on a small text into a cache, loaded (not retrained) the second time,
// a different text trains a different model, ids end lines with </s>, decode inverts encode; the batches drawn
// from a token stream; and the errors.
#include <boost/test/unit_test.hpp>

#include "common/text/token_batches.hpp"
#include "common/text/tokenizer.hpp"

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

std::string sample_text(int lines, int salt) {
  std::string text;
  const char* words[] = {"merge", "expert", "router", "token", "segment", "curvature", "mask", "base"};
  for (int i = 0; i < lines; ++i) {
    for (int w = 0; w < 6; ++w) text += std::string(words[(i * 7 + w * 3 + salt) % 8]) + (w < 5 ? " " : "");
    text += " .\n";
  }
  return text;
}

}  // namespace

BOOST_AUTO_TEST_CASE(tokenizer_trains_once_and_round_trips) {
  const fs::path cache = fs::temp_directory_path() / ("camex-tokenizer-" + std::to_string(::getpid()));
  fs::remove_all(cache);
  bool trained = false;
  const Tokenizer first = Tokenizer::trained_on(sample_text(300, 0), 48, cache, &trained);
  BOOST_TEST(trained);
  BOOST_TEST(first.vocab() == 48u);
  const Tokenizer again = Tokenizer::trained_on(sample_text(300, 0), 48, cache, &trained);
  BOOST_TEST(!trained);
  BOOST_TEST(again.path() == first.path());
  const Tokenizer other = Tokenizer::trained_on(sample_text(300, 1), 48, cache, &trained);
  BOOST_TEST(trained);
  BOOST_TEST(other.path() != first.path());
  const auto ids = first.encode("merge token expert .\nrouter mask\n");
  BOOST_TEST(ids.back() == Tokenizer::end_of_line);
  BOOST_TEST(std::count(ids.begin(), ids.end(), Tokenizer::end_of_line) == 2);
  std::vector<std::int32_t> line(ids.begin(), std::find(ids.begin(), ids.end(), Tokenizer::end_of_line));
  BOOST_TEST(first.decode(line) == "merge token expert .");
  for (const auto& entry : fs::directory_iterator(cache))  // no leftovers: models and their checksums
    BOOST_TEST((entry.path().extension() == ".model" || entry.path().extension() == ".fnv1a"), entry.path());
  fs::remove_all(cache);
}

namespace {
std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
}  // namespace

// A cached model that was truncated, overwritten in one byte, or has lost its checksum is trained again, into the
// same bytes (training is deterministic); an intact one is loaded.
BOOST_AUTO_TEST_CASE(a_corrupt_cached_tokenizer_is_trained_again) {
  const fs::path cache = fs::temp_directory_path() / ("camex-tokenizer-corrupt-" + std::to_string(::getpid()));
  fs::remove_all(cache);
  const std::string text = sample_text(300, 2);
  bool trained = false;
  const fs::path model = Tokenizer::trained_on(text, 40, cache, &trained).path();
  BOOST_REQUIRE(trained);
  const std::string original = file_bytes(model);
  const fs::path checksum = model.string() + ".fnv1a";
  const auto damage = [&](const std::string& what, const std::function<void()>& harm) {
    harm();
    const Tokenizer again = Tokenizer::trained_on(text, 40, cache, &trained);
    BOOST_TEST(trained, what << ": the damaged cache was loaded");
    BOOST_TEST((file_bytes(model) == original), what << ": the retrained model differs");
    BOOST_TEST(fs::exists(checksum), what);
  };
  damage("truncated", [&] { fs::resize_file(model, original.size() / 2); });
  damage("one byte overwritten", [&] {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(original.size() / 3));
    f.put(static_cast<char>(original[original.size() / 3] ^ 0x5a));
  });
  damage("checksum lost", [&] { fs::remove(checksum); });
  Tokenizer::trained_on(text, 40, cache, &trained);
  BOOST_TEST(!trained);
  fs::remove_all(cache);
}

// Two trainings from scratch, in caches at different paths, write the same bytes (and so the same hash), several
// times over; another text gives another hash.
BOOST_AUTO_TEST_CASE(tokenizer_training_is_deterministic) {
  const fs::path root = fs::temp_directory_path() / ("camex-tokenizer-twice-" + std::to_string(::getpid()));
  fs::remove_all(root);
  const std::string text = sample_text(400, 3);
  std::string first_bytes, first_hash;
  for (int run = 0; run < 3; ++run) {
    bool trained = false;
    const Tokenizer t = Tokenizer::trained_on(text, 64, root / ("cache-number-" + std::to_string(run)), &trained);
    BOOST_TEST(trained);
    const std::string bytes = file_bytes(t.path());
    BOOST_TEST(!bytes.empty());
    BOOST_TEST(bytes.find(root.string()) == std::string::npos);  // no path is recorded in the model
    if (run == 0) {
      first_bytes = bytes;
      first_hash = t.hash();
    } else {
      BOOST_TEST((bytes == first_bytes), "training " << run << " wrote other bytes");
      BOOST_TEST(t.hash() == first_hash);
    }
  }
  BOOST_TEST(Tokenizer::trained_on(text + "quokka zebra narwhal .\n", 64, root / "other").hash() != first_hash);
  fs::remove_all(root);
}

BOOST_AUTO_TEST_CASE(tokenizer_errors) {
  BOOST_CHECK_EXCEPTION(Tokenizer::trained_on("a b c\n", 8, fs::temp_directory_path()), data_error, [](const data_error& e) {
    return std::string(e.what()).find("expected 16 to 65536") != std::string::npos;
  });
  const fs::path file = fs::temp_directory_path() / ("camex-not-a-dir-" + std::to_string(::getpid()));
  std::ofstream(file) << "x";
  BOOST_CHECK_EXCEPTION(Tokenizer::trained_on("a b c\n", 32, file / "cache"), data_error, [](const data_error& e) {
    return std::string(e.what()).find("cannot create the tokenizer cache") != std::string::npos;
  });
  fs::remove(file);
  BOOST_CHECK_EXCEPTION(Tokenizer(fs::temp_directory_path() / "no-such.model"), data_error, [](const data_error& e) {
    return std::string(e.what()).find("cannot load the tokenizer") != std::string::npos;
  });
}

BOOST_AUTO_TEST_CASE(batches_are_windows_keyed_by_step) {
  std::vector<std::int32_t> stream(100);
  for (int i = 0; i < 100; ++i) stream[i] = i;
  const TokenBatches batches(stream, 3, 8, "the test stream");
  BOOST_TEST(batches.evaluation_batches() == 4u);  // (100 - 1) / 24
  std::int32_t in[24], out[24], in2[24], out2[24];
  batches.training_batch(5, 17, in, out);
  batches.training_batch(5, 17, in2, out2);
  BOOST_TEST(std::equal(in, in + 24, in2));
  for (int s = 0; s < 3; ++s)
    for (int t = 0; t < 8; ++t) {
      BOOST_TEST(out[s * 8 + t] == in[s * 8 + t] + 1);                 // targets are the next tokens
      if (t > 0) BOOST_TEST(in[s * 8 + t] == in[s * 8 + t - 1] + 1);   // a window is contiguous
      BOOST_TEST(in[s * 8 + t] + 1 <= 99);
    }
  batches.training_batch(5, 18, in2, out2);
  BOOST_TEST(!std::equal(in, in + 24, in2));
  batches.evaluation_batch(1, in, out);
  BOOST_TEST(in[0] == 24);
  BOOST_TEST(out[23] == 48);
  // The shares of three processes (2 + 1 sequences, then 1 + 1 + 1) hold the whole batch's windows.
  for (const int ranks : {2, 3}) {
    std::int32_t part_in[24], part_out[24];
    batches.training_batch(5, 17, in2, out2);
    for (int r = 0; r < ranks; ++r) {
      const BatchShare share = batch_share(3, r, ranks);
      batches.training_batch(5, 17, share, part_in, part_out);
      BOOST_TEST(std::equal(part_in, part_in + 8 * share.count, in2 + 8 * share.first));
      BOOST_TEST(std::equal(part_out, part_out + 8 * share.count, out2 + 8 * share.first));
      batches.evaluation_batch(2, share, part_in, part_out);
      BOOST_TEST(part_in[0] == static_cast<std::int32_t>(48 + 8 * share.first));
    }
  }
  BOOST_CHECK_THROW(batches.training_batch(5, 17, BatchShare{.first = 2, .count = 2, .whole = 3}, in, out), camex::argument_error);
  BOOST_CHECK_THROW(batches.evaluation_batch(0, BatchShare{.first = 0, .count = 1, .whole = 4}, in, out), camex::argument_error);
  BOOST_CHECK_EXCEPTION(TokenBatches(std::vector<std::int32_t>(24), 3, 8, "the validation split"), data_error,
                        [](const data_error& e) {
                          return std::string(e.what()).find("the validation split holds 24 tokens: expected at least 25") != std::string::npos;
                        });
}
