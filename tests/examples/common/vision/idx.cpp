// IDX files: arrays written here (plain and gzip-compressed) read back exactly, and every kind of bad file is
// refused with a message naming the file and what is wrong: a missing file, a bad magic number, an element type
// other than bytes, a wrong number of dimensions, a dimension of 0, a truncated file (plain and compressed, and one
// declaring far more elements than it holds, refused without allocating them), a
// corrupt compressed stream, bytes after the last element, and labels outside the classes.
#include <boost/test/unit_test.hpp>

#include "common/vision/idx.hpp"
#include "common/vision/image_set.hpp"

#include <zlib.h>

#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

using namespace camex::examples;
namespace fs = std::filesystem;

namespace {

long peak_resident_kib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

fs::path scratch(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("camex-idx-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

std::vector<std::uint8_t> idx_bytes(std::uint8_t type, const std::vector<std::uint32_t>& dims, const std::vector<std::uint8_t>& data) {
  std::vector<std::uint8_t> out{0, 0, type, static_cast<std::uint8_t>(dims.size())};
  for (const std::uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(d >> shift));
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

fs::path write_plain(const std::string& name, const std::vector<std::uint8_t>& bytes) {
  const fs::path p = scratch(name);
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return p;
}

fs::path write_gzip(const std::string& name, const std::vector<std::uint8_t>& bytes) {
  const fs::path p = scratch(name);
  gzFile f = gzopen(p.c_str(), "wb");
  BOOST_REQUIRE(f != nullptr);
  BOOST_REQUIRE_EQUAL(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  gzclose(f);
  return p;
}

std::vector<std::uint8_t> file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void require_data_error(const std::function<void()>& f, std::initializer_list<std::string> fragments) {
  try {
    f();
  } catch (const data_error& e) {
    for (const auto& fragment : fragments)
      BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos, "'" << fragment << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected data_error");
}

std::vector<std::uint8_t> counting(std::size_t n) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(i * 37 + 11);
  return v;
}

}  // namespace

BOOST_AUTO_TEST_CASE(reads_plain_and_compressed) {
  const auto data = counting(3 * 4 * 5);
  const auto bytes = idx_bytes(0x08, {3, 4, 5}, data);
  for (const fs::path& p : {write_plain("a.idx", bytes), write_gzip("a.idx.gz", bytes)}) {
    BOOST_TEST_CONTEXT(p.filename()) {
      const IdxArray a = read_idx(p, 3);
      BOOST_TEST((a.dims == std::vector<std::size_t>{3, 4, 5}));
      BOOST_TEST(a.data == data);
    }
  }
  // A large dimension is read big-endian.
  const IdxArray wide = read_idx(write_gzip("wide.gz", idx_bytes(0x08, {300}, counting(300))), 1);
  BOOST_TEST(wide.dims[0] == 300u);
}

BOOST_AUTO_TEST_CASE(bad_files_are_named) {
  const auto good = idx_bytes(0x08, {2, 3}, counting(6));
  require_data_error([] { read_idx(scratch("missing.idx")); }, {"missing.idx", "does not exist"});
  auto magic = good;
  magic[0] = 0x1f;
  magic[1] = 0x00;
  require_data_error([&] { read_idx(write_plain("magic.idx", magic)); }, {"magic.idx", "not an IDX file", "31 0", "expected 0 0"});
  require_data_error([&] { read_idx(write_plain("float.idx", idx_bytes(0x0d, {2, 3}, counting(24)))); },
                     {"float.idx", "type 0x0d", "expected 0x08"});
  require_data_error([&] { read_idx(write_plain("none.idx", idx_bytes(0x08, {}, {}))); }, {"none.idx", "declares 0 dimensions"});
  require_data_error([&] { read_idx(write_plain("dims.idx", good), 3); }, {"dims.idx", "2 dimensions, expected 3"});
  require_data_error([&] { read_idx(write_plain("zero.idx", idx_bytes(0x08, {2, 0}, {}))); }, {"zero.idx", "dimension 1 is 0"});
  const std::vector<std::uint8_t> short_plain(good.begin(), good.end() - 2);
  require_data_error([&] { read_idx(write_plain("short.idx", short_plain)); },
                     {"short.idx", "truncated", "6 elements", "bytes 12..18", "ends at byte 16"});
  require_data_error([&] { read_idx(write_gzip("short.idx.gz", short_plain)); }, {"short.idx.gz", "truncated", "ends at byte 16"});
  const std::vector<std::uint8_t> header_only(good.begin(), good.begin() + 6);
  require_data_error([&] { read_idx(write_plain("header.idx", header_only)); }, {"header.idx", "truncated", "dimension 0"});
  // 20 bytes declaring 2^33 elements are refused as truncated once the 4 present are read, without the 8 GiB array
  // the header asks for: the elements arrive in pieces of 16 MiB and the array grows with them.
  const long peak_before = peak_resident_kib();
  require_data_error([&] { read_idx(write_plain("huge.idx", idx_bytes(0x08, {2048, 2048, 2048}, counting(4)))); },
                     {"huge.idx", "truncated", "8589934592 elements", "bytes 16..8589934608", "ends at byte 20"});
  BOOST_TEST(peak_resident_kib() - peak_before < 256 * 1024, "reading grew the peak resident set by "
                                                                  << peak_resident_kib() - peak_before << " KiB");
  auto longer = good;
  longer.push_back(7);
  require_data_error([&] { read_idx(write_plain("long.idx", longer)); }, {"long.idx", "bytes after the 6 elements"});

  // A compressed file cut short, and one whose deflate stream is damaged.
  const auto big = idx_bytes(0x08, {64, 64}, counting(64 * 64));
  const auto compressed = file_bytes(write_gzip("big.gz", big));
  const std::vector<std::uint8_t> cut(compressed.begin(), compressed.begin() + static_cast<std::ptrdiff_t>(compressed.size() / 2));
  require_data_error([&] { read_idx(write_plain("cut.gz", cut)); }, {"cut.gz", "truncated"});
  auto damaged = compressed;
  for (std::size_t i = 20; i < 40; ++i) damaged[i] ^= 0x5a;
  require_data_error([&] { read_idx(write_plain("damaged.gz", damaged)); }, {"damaged.gz", "corrupt compressed data"});
  fs::remove_all(scratch("").parent_path());
}

BOOST_AUTO_TEST_CASE(labelled_images) {
  const auto images = write_gzip("img.gz", idx_bytes(0x08, {4, 2, 3}, counting(24)));
  const auto labels = write_plain("lab.idx", idx_bytes(0x08, {4}, {0, 9, 3, 1}));
  const ImageSet set = read_image_set(images, labels, 10);
  BOOST_TEST(set.count() == 4u);
  BOOST_TEST(set.rows == 2u);
  BOOST_TEST(set.cols == 3u);
  BOOST_TEST(set.labels[1] == 9);
  const ImageSet tail = image_range(set, 2, 2);
  BOOST_TEST(tail.count() == 2u);
  BOOST_TEST(tail.pixels[0] == set.pixels[12]);
  require_data_error([&] { read_image_set(images, labels, 5); }, {"lab.idx", "label 1 is 9", "below 5"});
  const auto three = write_plain("three.idx", idx_bytes(0x08, {3}, {0, 1, 2}));
  require_data_error([&] { read_image_set(images, three, 10); }, {"holds 4 images", "3 labels"});
  require_data_error([&] { read_image_set(labels, labels, 10); }, {"lab.idx", "1 dimensions, expected 3"});
  require_data_error([&] { idx_file(scratch(""), "train-images-idx3-ubyte"); }, {"train-images-idx3-ubyte.gz", "dataset-fashion-mnist"});
  fs::remove_all(scratch("").parent_path());
}
