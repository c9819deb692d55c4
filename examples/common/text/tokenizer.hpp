#pragma once
// A sentencepiece BPE tokenizer (Debian's libsentencepiece) trained on a corpus' training split and cached: the
// model file is named by the vocabulary size and a hash of the training text, so a changed corpus or size trains
// a new one and an unchanged one loads in milliseconds. Ids: 0 is <unk>, 1 is </s>, which ends every line.
//
// Training is deterministic: the same text and size give the same model file, byte for byte, on every machine and
// in every directory. sentencepiece reads the lines from memory (no input path) and returns the model as bytes (no
// output prefix), so the trainer spec it stores holds no path, and it trains on one thread. The bytes are written
// atomically (io/atomic_file.hpp), and beside them their FNV-1a in `<model>.fnv1a`: a cached model whose bytes do
// not match it (truncated, overwritten, or from before the checksum) is trained again, which gives the same bytes.
// hash() names the model's bytes, for a checkpoint to record which tokenizer its embeddings belong to.

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "common/io/atomic_file.hpp"
#include "corpus.hpp"
#include "sentencepiece_model.hpp"

namespace camex::examples {

/// FNV-1a, 64 bits: a cache key, not a checksum against tampering.
inline std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;
  for (const unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

/// The lines of a text, one at a time, for sentencepiece's trainer.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::string& text) : lines_(text) { Next(); }
  bool done() const override { return done_; }
  void Next() override { done_ = !std::getline(lines_, line_); }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  std::istringstream lines_;
  std::string line_;
  bool done_ = false;
};

class Tokenizer {
 public:
  static constexpr std::int32_t end_of_line = 1;

  /// Loads the cached model for (training text, vocab) from `cache_dir`, or trains and caches it.
  static Tokenizer trained_on(const std::string& training_text, std::size_t vocab, const std::filesystem::path& cache_dir,
                              bool* trained = nullptr) {
    if (vocab < 16 || vocab > 65536)
      throw data_error("vocabulary size " + std::to_string(vocab) + ": expected 16 to 65536 tokens");
    std::error_code ec;
    std::filesystem::create_directories(cache_dir, ec);
    if (ec) throw data_error("cannot create the tokenizer cache '" + cache_dir.string() + "': " + ec.message());
    std::ostringstream key;
    key << "bpe-" << vocab << '-' << std::hex << fnv1a(training_text) << "-v2";  // v2: trained from memory
    const std::filesystem::path model = cache_dir / (key.str() + ".model");
    const std::filesystem::path checksum = model.string() + ".fnv1a";
    if (trained) *trained = false;
    if (std::filesystem::exists(model)) {
      const std::string fault = cache_fault(model, checksum);
      if (fault.empty()) return Tokenizer(model);
      std::fprintf(stderr, "note: the cached tokenizer '%s' %s: training it again\n", model.c_str(), fault.c_str());
    }
    const std::string args = "--vocab_size=" + std::to_string(vocab) +
                             " --model_type=bpe --character_coverage=1.0 --unk_id=0 --eos_id=1 --bos_id=-1"
                             " --pad_id=-1 --num_threads=1 --minloglevel=2 --max_sentence_length=16384"
                             " --input_sentence_size=0 --shuffle_input_sentence=false";
    LineIterator lines(training_text);
    std::string bytes;
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &bytes);
    if (!status.ok()) throw data_error("sentencepiece could not train a " + std::to_string(vocab) + "-token BPE model: " + status.ToString());
    // Processes sharing the cache (the ranks of a data-parallel run, runs started together) may train the same
    // model at once: each writes through its own temporary, and the last rename leaves the same bytes.
    write_text_atomically(model, bytes, process_temporary(model));
    write_text_atomically(checksum, hex(fnv1a(bytes)) + "\n", process_temporary(checksum));
    if (trained) *trained = true;
    return Tokenizer(model);
  }

  explicit Tokenizer(const std::filesystem::path& model) : path_(model) {
    // sentencepiece reports most faults of a model file in its status, some from deeper down as exceptions (a
    // zero-length piece: its trie builder throws), and takes the normalisation tables on trust: those are checked
    // here (sentencepiece_model.hpp). Both found by fuzzing, tests/fuzz/corpus/tokenizer_cache.
    sentencepiece::util::Status status;
    try {
      status = processor_.Load(model.string());
    } catch (const std::exception& e) {
      throw data_error("cannot load the tokenizer '" + model.string() + "': " + e.what());
    }
    if (!status.ok()) throw data_error("cannot load the tokenizer '" + model.string() + "': " + status.ToString());
    if (const std::string fault = sentencepiece_model_fault(processor_.serialized_model_proto()); !fault.empty())
      throw data_error("cannot load the tokenizer '" + model.string() + "': " + fault);
    std::ifstream in(model, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    hash_ = hex(fnv1a(bytes));
  }

  /// FNV-1a of the model file's bytes, in hex: equal for equal tokenizers.
  const std::string& hash() const { return hash_; }
  std::size_t vocab() const { return static_cast<std::size_t>(processor_.GetPieceSize()); }
  const std::filesystem::path& path() const { return path_; }

  /// Every line's ids followed by end_of_line.
  std::vector<std::int32_t> encode(const std::string& text) const {
    std::vector<std::int32_t> ids;
    std::istringstream lines(text);
    std::string line;
    std::vector<int> piece_ids;
    while (std::getline(lines, line)) {
      if (line.empty()) continue;
      const auto status = processor_.Encode(line, &piece_ids);
      if (!status.ok()) throw data_error("sentencepiece could not encode a line: " + status.ToString());
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
      ids.push_back(end_of_line);
    }
    return ids;
  }

  std::string decode(const std::vector<std::int32_t>& ids) const {
    std::string text;
    const auto status = processor_.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
    if (!status.ok()) throw data_error("sentencepiece could not decode: " + status.ToString());
    return text;
  }

  /// Why the cached `model` cannot be trusted ("" when its bytes match the FNV-1a written in `checksum`).
  static std::string cache_fault(const std::filesystem::path& model, const std::filesystem::path& checksum) {
    std::ifstream sum(checksum);
    std::string expected;
    if (!(sum >> expected)) return "has no checksum";
    std::ifstream in(model, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (hex(fnv1a(bytes)) != expected)
      return "does not match its checksum (" + std::to_string(bytes.size()) + " bytes: truncated or overwritten)";
    return "";
  }

 private:
  static std::string hex(std::uint64_t value) {
    std::ostringstream out;
    out << std::hex << value;
    return out.str();
  }

  std::filesystem::path path_;
  std::string hash_;
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace camex::examples
