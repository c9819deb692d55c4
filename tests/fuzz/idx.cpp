// Fuzz target: an IDX file, gzip-compressed or not (vision/idx.hpp), read as any number of dimensions and as the
// images and labels the ViT trainer expects. Any input is read or refused with data_error; none may allocate more
// than its bytes can fill.
#include "common/vision/idx.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto path = camex::fuzz::fresh_scratch() / "images.idx";
  camex::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  for (const std::size_t expected_dims : {0, 1, 3}) {
    try {
      const IdxArray array = read_idx(path, expected_dims);
      std::size_t count = 1;
      for (const std::size_t d : array.dims) count *= d;
      if (count != array.data.size()) __builtin_trap();
    } catch (const data_error&) {
    }
  }
  return 0;
}
