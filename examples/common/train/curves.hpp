#pragma once
// The training curves of a run: one CSV row per progress line (validation columns filled where the run
// evaluated), rewritten atomically each time so it is always whole, and a PNG of the losses drawn by gnuplot. A
// resumed run keeps the rows up to its checkpoint's step and continues the file.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/io/atomic_file.hpp"

namespace camex::examples {

struct CurveRow {
  std::uint64_t step = 0;
  double train_loss = 0, aux_loss = 0, learning_rate = 0, grad_norm = 0;
  double valid_loss = std::nan(""), valid_metric = std::nan("");
  double items_per_second = 0, ms_per_step = 0;
};

/// What a task's curves call its validation metric ("perplexity", "accuracy") and the items a step processes
/// ("tokens", "images"; "tok", "img" in progress lines).
struct CurveColumns {
  std::string metric, items, unit;
  std::string header() const {
    return "step,train_loss,aux_loss,learning_rate,grad_norm,valid_loss,valid_" + metric + "," + items + "_per_second,ms_per_step";
  }
};

class CurveLog {
 public:
  /// Starts `path` afresh, or (keep_until > 0) keeps its rows up to step keep_until.
  CurveLog(std::filesystem::path path, const CurveColumns& columns, std::uint64_t keep_until)
      : path_(std::move(path)), header_(columns.header()) {
    if (keep_until == 0 || !std::filesystem::exists(path_)) return;
    std::ifstream in(path_);
    std::string line;
    std::getline(in, line);
    if (line != header_) throw file_error("'" + path_.string() + "' is not a curves file of this program (its first line differs)");
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::uint64_t step = 0;
      if (!(fields >> step)) throw file_error("'" + path_.string() + "': malformed row '" + line + "'");
      if (step <= keep_until) kept_.push_back(line);
    }
  }

  void add(const CurveRow& r) {
    char buf[512];
    const bool valid = std::isfinite(r.valid_loss);
    std::snprintf(buf, sizeof buf, "%llu,%.6f,%.6e,%.6e,%.6f,%s,%s,%.1f,%.3f", static_cast<unsigned long long>(r.step),
                  r.train_loss, r.aux_loss, r.learning_rate, r.grad_norm, valid ? std::to_string(r.valid_loss).c_str() : "",
                  valid ? std::to_string(r.valid_metric).c_str() : "", r.items_per_second, r.ms_per_step);
    kept_.push_back(buf);
  }

  void write() const {
    write_atomically(path_, [&](std::ofstream& out) {
      out << header_ << '\n';
      for (const auto& row : kept_) out << row << '\n';
    });
  }

  /// Draws the training and validation losses into `png` with gnuplot; returns its path, or "" (with a note on
  /// stderr) where gnuplot is missing or fails: the CSV has the same numbers.
  std::string plot(const std::filesystem::path& png, const std::string& title, const std::string& ylabel) const {
    const std::filesystem::path script = png.string() + ".gp", temporary = png.string() + ".tmp.png";
    {
      std::ofstream gp(script);
      gp << "set terminal pngcairo size 960,600\nset output '" << temporary.string() << "'\n"
         << "set datafile separator ','\nset key autotitle columnhead\nset title '" << title << "'\n"
         << "set xlabel 'step'\nset ylabel '" << ylabel << "'\nset grid\n"
         << "plot '" << path_.string() << "' using 1:2 with lines lw 2 title 'train', "
         << "'' using 1:6 with linespoints pt 7 lw 2 title 'valid'\n";
    }
    const std::string command = "gnuplot '" + script.string() + "' 2>/dev/null";
    const bool ok = std::system(command.c_str()) == 0 && std::filesystem::exists(temporary);
    std::error_code ec;
    std::filesystem::remove(script, ec);
    if (!ok) {
      std::fprintf(stderr, "note: gnuplot is missing or failed; the curves are in %s\n", path_.c_str());
      return "";
    }
    std::filesystem::rename(temporary, png);
    return png.string();
  }

 private:
  std::filesystem::path path_;
  std::string header_;
  std::vector<std::string> kept_;
};

}  // namespace camex::examples
