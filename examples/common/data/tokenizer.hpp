#pragma once
// A sentencepiece BPE tokenizer (Debian's libsentencepiece) trained on a corpus' training split and cached: the
// model file is named by the vocabulary size and a hash of the training text, so a changed corpus or size trains
// a new one and an unchanged one loads in milliseconds. Ids: 0 is <unk>, 1 is </s>, which ends every line.
// Training writes to a temporary prefix and renames the model into place, so an interrupted run leaves no
// half-written cache.

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "corpus.hpp"

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
    key << "bpe-" << vocab << '-' << std::hex << fnv1a(training_text);
    const std::filesystem::path model = cache_dir / (key.str() + ".model");
    if (trained) *trained = false;
    if (!std::filesystem::exists(model)) {
      const std::filesystem::path input = cache_dir / (key.str() + ".train.txt.tmp");
      {
        std::ofstream out(input, std::ios::binary);
        out << training_text;
        if (!out.flush()) throw data_error("cannot write '" + input.string() + "'");
      }
      const std::filesystem::path prefix = cache_dir / (key.str() + ".tmp");
      const std::string args = "--input=" + input.string() + " --model_prefix=" + prefix.string() +
                               " --vocab_size=" + std::to_string(vocab) +
                               " --model_type=bpe --character_coverage=1.0 --unk_id=0 --eos_id=1 --bos_id=-1"
                               " --pad_id=-1 --num_threads=2 --minloglevel=2 --max_sentence_length=16384"
                               " --input_sentence_size=0 --shuffle_input_sentence=false";
      const auto status = sentencepiece::SentencePieceTrainer::Train(args);
      std::filesystem::remove(input, ec);
      if (!status.ok()) throw data_error("sentencepiece could not train a " + std::to_string(vocab) + "-token BPE model: " + status.ToString());
      std::filesystem::rename(prefix.string() + ".model", model);
      std::filesystem::remove(prefix.string() + ".vocab", ec);
      if (trained) *trained = true;
    }
    return Tokenizer(model);
  }

  explicit Tokenizer(const std::filesystem::path& model) : path_(model) {
    const auto status = processor_.Load(model.string());
    if (!status.ok()) throw data_error("cannot load the tokenizer '" + model.string() + "': " + status.ToString());
  }

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

 private:
  std::filesystem::path path_;
  sentencepiece::SentencePieceProcessor processor_;
};

}  // namespace camex::examples
