#pragma once
// The error a trainer's data loaders throw: a missing, truncated or malformed file, named with what was wrong.

#include <stdexcept>

namespace camex::examples {

class data_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace camex::examples
