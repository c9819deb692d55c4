#pragma once
// The one exception type camex throws for bad arguments, and the helper its messages are built with.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace camex {

/// Thrown when a camex entry point rejects an argument. what() reads
///   "<function>: argument '<argument>': expected <expected>, given <given>"
/// and each part is also available on its own, so callers can react without parsing text.
class argument_error : public std::invalid_argument {
 public:
  argument_error(std::string function, std::string argument, std::string expected, std::string given)
      : std::invalid_argument(function + ": argument '" + argument + "': expected " + expected + ", given " +
                              given),
        function_(std::move(function)),
        argument_(std::move(argument)),
        expected_(std::move(expected)),
        given_(std::move(given)) {}

  const std::string& function() const noexcept { return function_; }
  const std::string& argument() const noexcept { return argument_; }
  const std::string& expected() const noexcept { return expected_; }
  const std::string& given() const noexcept { return given_; }

 private:
  std::string function_, argument_, expected_, given_;
};

/// Streams its arguments into one string; builds the expected/given parts of messages.
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace camex
