// safetensors: a round trip of tensors and metadata, the header padded to 8 bytes, atomic replacement (no
// temporary left, an existing file replaced whole), and every malformed-file and misuse error with its message.
#include <boost/test/unit_test.hpp>

#include "common/io/safetensors.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

fs::path temp_file(const std::string& name) { return fs::temp_directory_path() / ("camex-st-" + std::to_string(::getpid()) + "-" + name); }

HostTensor floats(const std::string& name, std::vector<std::size_t> shape, float start) {
  std::size_t n = 1;
  for (auto e : shape) n *= e;
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = start + 0.5f * static_cast<float>(i);
  HostTensor t{name, "F32", shape, std::vector<unsigned char>(n * 4)};
  std::memcpy(t.bytes.data(), v.data(), n * 4);
  return t;
}

void require_error(const std::function<void()>& call, std::initializer_list<std::string> fragments) {
  try {
    call();
  } catch (const std::runtime_error& e) {
    for (const auto& f : fragments) BOOST_TEST(std::string(e.what()).find(f) != std::string::npos, "'" << f << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected an error");
}

/// A file with the given header text and `data` bytes after it.
fs::path raw_file(const std::string& name, const std::string& header, std::size_t data, std::uint64_t length_override = 0) {
  const fs::path p = temp_file(name);
  std::ofstream out(p, std::ios::binary);
  const std::uint64_t length = length_override ? length_override : header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(length >> (8 * i)));
  out << header << std::string(data, '\0');
  return p;
}

}  // namespace

BOOST_AUTO_TEST_CASE(round_trip_and_atomic_replacement) {
  const fs::path p = temp_file("round.safetensors");
  write_safetensors(p, {floats("a", {2, 3}, 1.0f), floats("b.c", {5}, -2.0f)}, {{"step", "7"}});
  BOOST_TEST(!fs::exists(p.string() + ".tmp"));
  {
    std::ifstream in(p, std::ios::binary);
    unsigned char prefix[8];
    in.read(reinterpret_cast<char*>(prefix), 8);
    BOOST_TEST(prefix[0] % 8 == 0);  // padded header
  }
  const SafetensorsFile f(p);
  BOOST_TEST(f.metadata("step") == "7");
  BOOST_TEST(f.contains("a"));
  const auto info = f.info("b.c");
  BOOST_TEST(info.dtype == "F32");
  BOOST_TEST(info.shape == std::vector<std::size_t>{5}, boost::test_tools::per_element());
  BOOST_TEST(info.bytes == 20u);
  require_error([&] { f.info("z"); }, {"has no tensor 'z'"});
  const auto* a = reinterpret_cast<const float*>(f.tensor("a", "F32", {2, 3}));
  const auto* b = reinterpret_cast<const float*>(f.tensor("b.c", "F32", {5}));
  BOOST_TEST(a[5] == 3.5f);
  BOOST_TEST(b[0] == -2.0f);
  // Replacing the file: the reader sees the new one whole.
  write_safetensors(p, {floats("a", {2, 3}, 10.0f)}, {{"step", "8"}});
  const SafetensorsFile g(p);
  BOOST_TEST(g.metadata("step") == "8");
  BOOST_TEST(!g.contains("b.c"));
  BOOST_TEST(reinterpret_cast<const float*>(g.tensor("a", "F32", {2, 3}))[0] == 10.0f);
  require_error([&] { g.tensor("a", "F32", {3, 2}); }, {"holds 'a' as F32 [2,3], expected F32 [3,2]"});
  require_error([&] { g.tensor("a", "F64", {2, 3}); }, {"expected F64"});
  require_error([&] { g.tensor("z", "F32", {1}); }, {"has no tensor 'z'"});
  require_error([&] { g.metadata("config"); }, {"has no metadata 'config'"});
  fs::remove(p);
}

BOOST_AUTO_TEST_CASE(malformed_files_are_refused_with_reasons) {
  require_error([] { SafetensorsFile(temp_file("absent")); }, {"cannot open the checkpoint"});
  const fs::path tiny = temp_file("tiny");
  std::ofstream(tiny) << "abc";
  require_error([&] { SafetensorsFile f(tiny); }, {"is 3 bytes long"});
  require_error([] { SafetensorsFile(raw_file("long", "{}", 0, 1000)); }, {"announces a header of 1000 bytes"});
  require_error([] { SafetensorsFile(raw_file("json", "{not json", 0)); }, {"not JSON"});
  require_error([] { SafetensorsFile(raw_file("array", "[1,2]", 0)); }, {"not a JSON object"});
  require_error([] { SafetensorsFile(raw_file("fields", R"({"a":{"dtype":"F32"}})", 0)); }, {"'a' lacks dtype, shape or data_offsets"});
  require_error([] { SafetensorsFile(raw_file("range", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8)); },
                {"outside the 8 data bytes"});
  require_error([] { SafetensorsFile(raw_file("span", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)); },
                {"spans 8 bytes", "needs 12"});
  require_error([] { SafetensorsFile(raw_file("dtype", R"({"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]}})", 8)); },
                {"unsupported safetensors dtype 'BF16'"});
  require_error([] { SafetensorsFile(raw_file("meta", R"({"__metadata__":{"k":1}})", 0)); }, {"metadata 'k' that is not a string"});
  // 2^62 x 4 floats is 2^66 bytes, which wraps around to 0 in size_t: a shape that would match empty offsets.
  require_error([] { SafetensorsFile(raw_file("wrap", R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", 0)); },
                {"tensor 'a' has a shape [4611686018427387904,4] of more bytes than a size_t counts"});
  for (const char* n : {"tiny", "long", "json", "array", "fields", "range", "span", "dtype", "meta", "wrap"}) fs::remove(temp_file(n));
}

BOOST_AUTO_TEST_CASE(writer_refuses_inconsistent_tensors) {
  HostTensor bad = floats("a", {2, 2}, 0.0f);
  bad.bytes.pop_back();
  require_error([&] { write_safetensors(temp_file("bad"), {bad}, {}); }, {"tensor 'a': 15 bytes for a F32 tensor of 4 entries"});
  require_error([&] { write_safetensors(temp_file("dup"), {floats("a", {1}, 0), floats("a", {1}, 0)}, {}); }, {"'a' appears twice"});
  require_error([&] { write_safetensors(temp_file("nodir") / "x" / "y.safetensors", {floats("a", {1}, 0)}, {}); },
                {"cannot open", "for writing"});
  BOOST_TEST(!fs::exists(temp_file("bad")));
}
