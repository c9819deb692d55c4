// Fuzz target: a checkpoint file (io/safetensors.hpp). Any input is read whole or refused with checkpoint_error;
// every tensor it accepts is read back, so an offset past the data would be a read past the buffer.
#include "common/io/safetensors.hpp"

#include "fuzz_input.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace camex::examples;
  const auto path = camex::fuzz::fresh_scratch() / "checkpoint.safetensors";
  camex::fuzz::write_file(path, {reinterpret_cast<const char*>(data), size});
  try {
    const SafetensorsFile file(path);
    for (const std::string& name : file.names()) {
      const SafetensorsFile::TensorInfo info = file.info(name);
      const unsigned char* bytes = file.tensor(name, info.dtype, info.shape);
      unsigned char sum = 0;
      for (std::size_t i = 0; i < info.bytes; ++i) sum ^= bytes[i];
      static_cast<void>(sum);
    }
    for (const auto& [key, value] : file.metadata()) static_cast<void>(file.metadata(key) == value);
  } catch (const checkpoint_error&) {
  }
  return 0;
}
