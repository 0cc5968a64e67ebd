// Tests for include/tpl/safetensors.h and include/tpl/npy.h. Every test writes its own files into
// a fresh directory under the system temp dir and removes it afterwards.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "tpl/error.h"
#include "tpl/npy.h"
#include "tpl/safetensors.h"
#include "tpl/tensor.h"

namespace tpl {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        fs::temp_directory_path() / ("tpl_io_test_" + std::to_string(::getpid()) + "_" +
                                     std::to_string(counter++) + "_" + (info ? info->name() : "x"));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string le64(std::uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file with a hand-written header: [u64 len][header][data].
void write_raw_st(const std::string& path, const std::string& header, const std::string& data) {
  write_bytes(path, le64(header.size()) + header + data);
}

// Runs fn, expects IoError whose message contains every one of `parts`.
void expect_io_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected IoError containing '" << parts.front() << "'";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected IoError, got another exception: " << e.what();
  }
}

// Values that every dtype represents exactly.
Tensor make_tensor(DType dt, std::int64_t rows, std::int64_t cols, int seed = 0) {
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>((static_cast<int>(i) * 7 + seed * 13) % 101 - 50);
  if (dt == DType::kF32 || dt == DType::kBF16 || dt == DType::kF16)
    for (std::size_t i = 0; i < v.size(); i += 3) v[i] *= 0.25f;
  return Tensor::from_f32(v, rows, cols, dt);
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  if (a.dtype() != b.dtype() || a.rows() != b.rows() || a.cols() != b.cols()) return false;
  const std::size_t row_bytes = static_cast<std::size_t>(a.cols()) * dtype_size(a.dtype());
  for (std::int64_t r = 0; r < a.rows(); ++r)
    if (row_bytes && std::memcmp(a.at(r, 0), b.at(r, 0), row_bytes) != 0) return false;
  return true;
}

const DType kAllDtypes[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kI32};

// ------------------------------------------------------------------------------------------------
// safetensors round trips

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir tmp;
  std::vector<Tensor> owned;
  std::vector<std::pair<std::string, TensorView>> list;
  int seed = 0;
  for (DType dt : kAllDtypes) {
    owned.push_back(make_tensor(dt, 3, 5, seed++));
    list.emplace_back(std::string("w.") + dtype_name(dt), owned.back().view());
    owned.push_back(make_tensor(dt, 1, 7, seed++));
    list.emplace_back(std::string("b.") + dtype_name(dt), owned.back().view());
  }
  owned.push_back(Tensor(DType::kF32, 0, 4));
  list.emplace_back("empty", owned.back().view());
  const std::string path = tmp.file("rt.safetensors");
  write_safetensors(path, list, {{"format", "pt"}});

  // Header length is a multiple of 8 and the file is exactly header + data.
  const std::string bytes = read_bytes(path);
  ASSERT_GE(bytes.size(), 8u);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  std::size_t data = 0;
  for (const auto& [name, v] : list) data += v.nbytes();
  EXPECT_EQ(bytes.size(), 8 + n + data);

  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.names().size(), list.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  for (const auto& [name, v] : list) {
    ASSERT_TRUE(f.contains(name)) << name;
    const TensorInfo info = f.info(name);
    EXPECT_EQ(info.dtype, v.dtype()) << name;
    EXPECT_EQ(info.shape, (std::vector<std::int64_t>{v.rows(), v.cols()})) << name;
    const Tensor t = f.read(name);
    EXPECT_TRUE(same_bytes(t.view(), v)) << name;
  }
  EXPECT_FALSE(f.contains("nope"));
}

TEST(Safetensors, StridedViewIsWrittenDensely) {
  TempDir tmp;
  const Tensor full = make_tensor(DType::kBF16, 4, 9);
  const TensorView sub = full.view().col_slice(2, 5);
  ASSERT_FALSE(sub.contiguous());
  const std::string path = tmp.file("s.safetensors");
  write_safetensors(path, {{"sub", sub}});
  const Tensor back = SafetensorsFile::open(path).read("sub");
  EXPECT_TRUE(same_bytes(back.view(), sub));
}

TEST(Safetensors, WriteRejectsBadNames) {
  TempDir tmp;
  const Tensor t = make_tensor(DType::kF32, 2, 2);
  EXPECT_THROW(write_safetensors(tmp.file("a"), {{"x", t.view()}, {"x", t.view()}}),
               InvalidArgument);
  EXPECT_THROW(write_safetensors(tmp.file("a"), {{"__metadata__", t.view()}}), InvalidArgument);
  EXPECT_THROW(write_safetensors(tmp.file("a"), {{"", t.view()}}), InvalidArgument);
  expect_io_error(
      [&] {
        write_safetensors(tmp.file("no/such/dir/a"), {{"x", t.view()}});
      },
      {"cannot open", "no/such/dir/a"});
}

TEST(Safetensors, ScalarAndOneDimAndHigherRank) {
  TempDir tmp;
  std::string data(4 * 5 + 4 + 2 * 2 * 2 * 4, '\0');
  for (std::size_t i = 0; i < data.size() / 4; ++i) {
    const float v = static_cast<float>(i);
    std::memcpy(&data[i * 4], &v, 4);
  }
  const std::string header =
      R"({"vec": {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]},)"
      R"( "scalar": {"dtype": "F32", "shape": [], "data_offsets": [20, 24]},)"
      R"( "cube": {"dtype": "F32", "shape": [2, 2, 2], "data_offsets": [24, 56]}})";
  const std::string path = tmp.file("r.safetensors");
  write_raw_st(path, header, data);
  const SafetensorsFile f = SafetensorsFile::open(path);
  const Tensor vec = f.read("vec");
  EXPECT_EQ(vec.rows(), 1);
  EXPECT_EQ(vec.cols(), 5);
  EXPECT_EQ(get_f32(vec, 0, 4), 4.0f);
  const Tensor sc = f.read("scalar");
  EXPECT_EQ(sc.rows(), 1);
  EXPECT_EQ(sc.cols(), 1);
  EXPECT_EQ(get_f32(sc, 0, 0), 5.0f);
  EXPECT_EQ(f.info("cube").shape, (std::vector<std::int64_t>{2, 2, 2}));
  expect_io_error([&] { f.read("cube"); }, {"cube", "rank 3", "r.safetensors"});
  expect_io_error([&] { f.read_rows("cube", 0, 1); }, {"cube", "rank 3"});
  const Tensor vc = f.read_cols("vec", 1, 3);
  EXPECT_EQ(vc.cols(), 3);
  EXPECT_EQ(get_f32(vc, 0, 0), 1.0f);
}

// The same slices read from the file and from its bytes held in memory (from_bytes).
TEST(Safetensors, RowAndColumnSlicesMatchFullTensor) {
  TempDir tmp;
  std::vector<Tensor> owned;
  std::vector<std::pair<std::string, TensorView>> list;
  for (DType dt : kAllDtypes) {
    owned.push_back(make_tensor(dt, 7, 11, static_cast<int>(dt)));
    list.emplace_back(dtype_name(dt), owned.back().view());
  }
  const std::string path = tmp.file("slices.safetensors");
  write_safetensors(path, list);
  for (const bool in_memory : {false, true}) {
    SCOPED_TRACE(in_memory ? "from_bytes" : "open");
    const SafetensorsFile f = in_memory ? SafetensorsFile::from_bytes(read_bytes(path), path)
                                        : SafetensorsFile::open(path);
    for (const auto& [name, v] : list) {
      const Tensor full = f.read(name);
      EXPECT_TRUE(same_bytes(full.view(), v)) << name;
      for (std::int64_t off = 0; off <= 7; ++off)
        for (std::int64_t n = 0; off + n <= 7; ++n) {
          const Tensor rows = f.read_rows(name, off, n);
          EXPECT_TRUE(same_bytes(rows.view(), v.row_slice(off, n)))
              << name << " rows " << off << "+" << n;
        }
      for (std::int64_t off = 0; off <= 11; ++off)
        for (std::int64_t n = 0; off + n <= 11; ++n) {
          const Tensor cols = f.read_cols(name, off, n);
          EXPECT_TRUE(same_bytes(cols.view(), v.col_slice(off, n)))
              << name << " cols " << off << "+" << n;
        }
    }
    expect_io_error([&] { f.read_rows("f32", 5, 3); },
                    {"out of range", "f32", "slices.safetensors"});
    expect_io_error([&] { f.read_rows("f32", -1, 2); }, {"out of range"});
    expect_io_error([&] { f.read_rows("f32", 0, -1); }, {"out of range"});
    expect_io_error([&] { f.read_cols("int8", 10, 2); }, {"out of range", "int8"});
    expect_io_error([&] { f.read_cols("int8", 12, 0); }, {"out of range"});
    expect_io_error([&] { f.read_rows("f32", INT64_MAX, INT64_MAX); }, {"out of range"});
  }
}

// from_bytes validates as open() does, names the file it was given in errors, and reads only
// the bytes it holds: the file may be gone, or never have existed.
TEST(Safetensors, InMemoryFileNeedsNoFile) {
  TempDir tmp;
  const Tensor a = make_tensor(DType::kF16, 3, 5);
  const std::string path = tmp.file("gone.safetensors");
  write_safetensors(path, {{"a", a.view()}});
  std::string bytes = read_bytes(path);
  fs::remove(path);
  const SafetensorsFile f = SafetensorsFile::from_bytes(bytes, "received/model.safetensors");
  EXPECT_EQ(f.path(), "received/model.safetensors");
  EXPECT_TRUE(same_bytes(f.read("a").view(), a.view()));
  EXPECT_TRUE(same_bytes(f.read_cols("a", 1, 3).view(), a.view().col_slice(1, 3)));
  const SafetensorsFile copy = f;  // copies share the bytes
  EXPECT_TRUE(same_bytes(copy.read_rows("a", 2, 1).view(), a.view().row_slice(2, 1)));
  expect_io_error([&] { f.read("b"); }, {"'b'", "received/model.safetensors"});
  bytes.pop_back();
  expect_io_error([&] { SafetensorsFile::from_bytes(bytes, "cut.safetensors"); },
                  {"outside the file", "cut.safetensors"});
}

TEST(Safetensors, MissingTensorListsAvailableNames) {
  TempDir tmp;
  const Tensor t = make_tensor(DType::kF32, 2, 2);
  const std::string path = tmp.file("m.safetensors");
  write_safetensors(path, {{"model.layers.0.q_proj.weight", t.view()},
                           {"model.layers.0.k_proj.weight", t.view()}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  expect_io_error([&] { f.read("model.layers.0.v_proj.weight"); },
                  {"model.layers.0.v_proj.weight", "not found", "m.safetensors",
                   "model.layers.0.k_proj.weight", "2 tensors"});
  expect_io_error([&] { f.info("x"); }, {"'x'", "not found"});
  expect_io_error([&] { f.read_cols("x", 0, 1); }, {"'x'", "not found"});
}

// ------------------------------------------------------------------------------------------------
// Checkpoint directories

TEST(SafetensorsDir, ShardedIndex) {
  TempDir tmp;
  const Tensor a = make_tensor(DType::kBF16, 6, 4, 1);
  const Tensor b = make_tensor(DType::kF32, 1, 4, 2);
  const Tensor c = make_tensor(DType::kI8, 3, 8, 3);
  write_safetensors(tmp.file("model-00001-of-00002.safetensors"),
                    {{"a", a.view()}, {"b", b.view()}});
  write_safetensors(tmp.file("model-00002-of-00002.safetensors"),
                    {{"c", c.view()}, {"unlisted", b.view()}});
  write_bytes(tmp.file("model.safetensors.index.json"),
              R"({"metadata": {"total_size": 100}, "weight_map": {)"
              R"("a": "model-00001-of-00002.safetensors",)"
              R"("b": "model-00001-of-00002.safetensors",)"
              R"("c": "model-00002-of-00002.safetensors"}})");
  const SafetensorsDir d = SafetensorsDir::open(tmp.path().string());
  EXPECT_EQ(d.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(d.contains("c"));
  EXPECT_FALSE(d.contains("unlisted"));
  EXPECT_EQ(d.info("c").dtype, DType::kI8);
  EXPECT_TRUE(same_bytes(d.read("a").view(), a.view()));
  EXPECT_TRUE(same_bytes(d.read("b").view(), b.view()));
  EXPECT_TRUE(same_bytes(d.read("c").view(), c.view()));
  EXPECT_TRUE(same_bytes(d.read_rows("a", 2, 3).view(), a.view().row_slice(2, 3)));
  EXPECT_TRUE(same_bytes(d.read_cols("c", 4, 4).view(), c.view().col_slice(4, 4)));
  EXPECT_NE(d.file_for("c").path().find("00002"), std::string::npos);
  expect_io_error([&] { d.read("zzz"); }, {"'zzz'", "not found", "'a'", "3 tensors"});
}

TEST(SafetensorsDir, SingleFileAndPlainPath) {
  TempDir tmp;
  const Tensor a = make_tensor(DType::kF16, 2, 3);
  write_safetensors(tmp.file("model.safetensors"), {{"a", a.view()}});
  const SafetensorsDir d = SafetensorsDir::open(tmp.path().string());
  EXPECT_EQ(d.names(), std::vector<std::string>{"a"});
  EXPECT_TRUE(same_bytes(d.read("a").view(), a.view()));
  const SafetensorsDir d2 = SafetensorsDir::open(tmp.file("model.safetensors"));
  EXPECT_TRUE(same_bytes(d2.read_cols("a", 1, 2).view(), a.view().col_slice(1, 2)));
}

TEST(SafetensorsDir, BadDirectories) {
  TempDir tmp;
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); },
                  {"model.safetensors.index.json", "model.safetensors"});
  expect_io_error([&] { SafetensorsDir::open(tmp.file("does-not-exist")); }, {"does-not-exist"});

  const Tensor a = make_tensor(DType::kF32, 2, 2);
  write_safetensors(tmp.file("s1.safetensors"), {{"a", a.view()}});
  const std::string index = tmp.file("model.safetensors.index.json");

  write_bytes(index, "{not json");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); }, {"not valid JSON"});
  write_bytes(index, R"({"metadata": {}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); }, {"weight_map"});
  write_bytes(index, R"({"weight_map": {"a": 3}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); }, {"'a'", "file name"});
  write_bytes(index, R"({"weight_map": {"a": "missing.safetensors"}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); },
                  {"missing.safetensors", "no such file"});
  write_bytes(index, R"({"weight_map": {"b": "s1.safetensors"}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); },
                  {"'b'", "s1.safetensors", "no such tensor"});
  write_bytes(index, R"({"weight_map": {"a": "../s1.safetensors"}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); }, {"outside"});
  // A broken shard is reported with its own file name.
  write_bytes(tmp.file("s2.safetensors"), "abc");
  write_bytes(index, R"({"weight_map": {"a": "s1.safetensors", "x": "s2.safetensors"}})");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); },
                  {"s2.safetensors", "shorter than 8 bytes"});
}

// ------------------------------------------------------------------------------------------------
// Malformed safetensors files

class Malformed : public ::testing::Test {
 protected:
  void expect_open_fails(const std::string& bytes, const std::vector<std::string>& parts) {
    const std::string path = tmp_.file("bad.safetensors");
    write_bytes(path, bytes);
    std::vector<std::string> all = parts;
    all.push_back("bad.safetensors");
    expect_io_error([&] { SafetensorsFile::open(path); }, all);
  }
  static std::string good_entry(const std::string& body) { return R"({"t": {)" + body + "}}"; }
  TempDir tmp_;
};

TEST_F(Malformed, ShorterThanEightBytes) {
  expect_open_fails("", {"shorter than 8 bytes"});
  expect_open_fails("abc", {"shorter than 8 bytes"});
  expect_open_fails(std::string(7, '\0'), {"shorter than 8 bytes"});
}

TEST_F(Malformed, HeaderLengthLargerThanFile) {
  expect_open_fails(le64(1000) + "{}", {"header length 1000", "larger than the file"});
  expect_open_fails(le64(~0ull) + "{}", {"larger than the file"});
  expect_open_fails(le64(1ull << 62), {"larger than the file"});
  expect_open_fails(le64(3) + "{}", {"larger than the file"});
}

TEST_F(Malformed, HeaderNotJson) {
  expect_open_fails(le64(0), {"not valid JSON"});
  expect_open_fails(le64(9) + "{\"t\": {]}", {"not valid JSON"});
  expect_open_fails(le64(4) + "\xff\xfe{}", {"not valid JSON"});
  const std::string arr = "[1, 2]";
  expect_open_fails(le64(arr.size()) + arr, {"JSON object"});
  // Deep nesting must not crash: it is refused as malformed (tpl/json_text.h).
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_open_fails(le64(deep.size()) + deep, {"not valid JSON", "nest"});
  const std::string deep_bad = std::string(100000, '[');
  expect_open_fails(le64(deep_bad.size()) + deep_bad, {"not valid JSON"});
}

TEST_F(Malformed, UnknownDtype) {
  for (const char* dt : {"F64", "Q4_K", "f32", "U8", "BOOL"}) {
    const std::string h = good_entry(std::string(R"("dtype": ")") + dt +
                                     R"(", "shape": [1], "data_offsets": [0, 4])");
    expect_open_fails(le64(h.size()) + h + std::string(8, '\0'), {"unknown", dt, "'t'"});
  }
  const std::string h = good_entry(R"("dtype": 5, "shape": [1], "data_offsets": [0, 4])");
  expect_open_fails(le64(h.size()) + h + std::string(4, '\0'), {"unknown", "'t'"});
}

TEST_F(Malformed, ShapeOffsetMismatch) {
  const std::string h = good_entry(R"("dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20])");
  expect_open_fails(le64(h.size()) + h + std::string(24, '\0'), {"mismatch", "'t'", "[2, 3]"});
  const std::string h2 = good_entry(R"("dtype": "BF16", "shape": [4], "data_offsets": [0, 16])");
  expect_open_fails(le64(h2.size()) + h2 + std::string(16, '\0'), {"mismatch"});
  // Shape whose product overflows.
  const std::string h3 = good_entry(
      R"("dtype": "F32", "shape": [4611686018427387904, 4611686018427387904], "data_offsets": [0, 0])");
  expect_open_fails(le64(h3.size()) + h3, {"mismatch", "overflows"});
  const std::string h4 =
      good_entry(R"("dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 4])");
  expect_open_fails(le64(h4.size()) + h4 + std::string(4, '\0'), {"mismatch"});
}

TEST_F(Malformed, OffsetsOutsideTheFile) {
  // Offsets past the end of the data section (the data was truncated).
  const std::string h = good_entry(R"("dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24])");
  expect_open_fails(le64(h.size()) + h + std::string(20, '\0'), {"outside the file", "'t'"});
  const std::string h2 =
      good_entry(R"("dtype": "F32", "shape": [1], "data_offsets": [1000000, 1000004])");
  expect_open_fails(le64(h2.size()) + h2 + std::string(8, '\0'), {"outside the file"});
  const std::string h3 = good_entry(
      R"("dtype": "I8", "shape": [1], "data_offsets": [18446744073709551615, 18446744073709551615])");
  expect_open_fails(le64(h3.size()) + h3, {"outside the file"});
}

TEST_F(Malformed, BadOffsetsAndShapes) {
  auto bad = [&](const std::string& body, const std::vector<std::string>& parts) {
    const std::string h = good_entry(body);
    expect_open_fails(le64(h.size()) + h + std::string(64, '\0'), parts);
  };
  bad(R"("dtype": "F32", "shape": [1], "data_offsets": [8, 4])", {"begin > end"});
  bad(R"("dtype": "F32", "shape": [-1], "data_offsets": [0, 4])", {"non-negative", "shape"});
  bad(R"("dtype": "F32", "shape": [1.5], "data_offsets": [0, 4])", {"non-negative"});
  bad(R"("dtype": "F32", "shape": 4, "data_offsets": [0, 4])", {"shape must be an array"});
  bad(R"("dtype": "F32", "shape": [1], "data_offsets": [-4, 0])", {"data_offsets"});
  bad(R"("dtype": "F32", "shape": [1], "data_offsets": [0])", {"[begin, end]"});
  bad(R"("dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8])", {"[begin, end]"});
  bad(R"("dtype": "F32", "shape": [1])", {"data_offsets"});
  const std::string h = R"({"t": 3})";
  expect_open_fails(le64(h.size()) + h, {"'t'", "object"});
  const std::string m = R"({"__metadata__": {"k": 1}})";
  expect_open_fails(le64(m.size()) + m, {"__metadata__", "'k'"});
}

TEST_F(Malformed, NotAFile) {
  expect_io_error([&] { SafetensorsFile::open(tmp_.file("nope.safetensors")); },
                  {"nope.safetensors", "no such file"});
  expect_io_error([&] { SafetensorsFile::open(tmp_.path().string()); }, {"not a regular file"});
}

// Every truncation and many random byte flips of a valid file: open/read either succeed or throw
// IoError; nothing crashes, hangs or throws anything else.
TEST_F(Malformed, TruncationsAndCorruptionsNeverCrash) {
  const Tensor a = make_tensor(DType::kF32, 3, 4);
  const Tensor b = make_tensor(DType::kI8, 2, 5);
  const std::string good = tmp_.file("good.safetensors");
  write_safetensors(good, {{"a", a.view()}, {"b", b.view()}}, {{"k", "v"}});
  const std::string bytes = read_bytes(good);
  const std::string path = tmp_.file("mut.safetensors");
  auto exercise = [&](const std::string& content) {
    write_bytes(path, content);
    try {
      const SafetensorsFile f = SafetensorsFile::open(path);
      for (const std::string& n : f.names()) {
        try {
          (void)f.read(n);
          (void)f.read_rows(n, 0, 1);
          (void)f.read_cols(n, 0, 1);
        } catch (const IoError&) {
        }
      }
    } catch (const IoError&) {
    }
  };
  for (std::size_t len = 0; len < bytes.size(); ++len) {
    write_bytes(path, bytes.substr(0, len));
    EXPECT_THROW(SafetensorsFile::open(path), IoError) << "length " << len;
  }
  std::mt19937 rng(42);
  for (int i = 0; i < 400; ++i) {
    std::string m = bytes;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      const std::size_t pos = rng() % std::min<std::size_t>(m.size(), 8 + 200);
      m[pos] = static_cast<char>(rng() & 0xff);
    }
    exercise(m);
  }
}

// ------------------------------------------------------------------------------------------------
// npy

TEST(Npy, RoundTripAndHeaderBytes) {
  TempDir tmp;
  const std::pair<DType, const char*> cases[] = {
      {DType::kF32, "<f4"}, {DType::kF16, "<f2"}, {DType::kI8, "<i1"}, {DType::kI32, "<i4"}};
  for (const auto& [dt, descr] : cases) {
    const Tensor t = make_tensor(dt, 3, 4, 5);
    const std::string path = tmp.file(std::string("t_") + dtype_name(dt) + ".npy");
    write_npy(path, t.view());
    const std::string bytes = read_bytes(path);
    ASSERT_GE(bytes.size(), 10u);
    EXPECT_EQ(bytes.substr(0, 6), std::string("\x93NUMPY"));
    EXPECT_EQ(bytes[6], 1);
    EXPECT_EQ(bytes[7], 0);
    const std::size_t hlen = static_cast<unsigned char>(bytes[8]) |
                             (static_cast<std::size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    EXPECT_EQ((10 + hlen) % 64, 0u) << dtype_name(dt);
    ASSERT_EQ(bytes.size(), 10 + hlen + t.nbytes());
    const std::string header = bytes.substr(10, hlen);
    EXPECT_EQ(header.back(), '\n');
    EXPECT_EQ(header.rfind("{'descr': '" + std::string(descr) + "', ", 0), 0u) << header;
    EXPECT_NE(header.find("'fortran_order': False"), std::string::npos);
    EXPECT_NE(header.find("'shape': (3, 4)"), std::string::npos);
    EXPECT_EQ(std::memcmp(bytes.data() + 10 + hlen, t.data(), t.nbytes()), 0);
    const Tensor back = read_npy(path);
    EXPECT_TRUE(same_bytes(back.view(), t.view())) << dtype_name(dt);
  }
}

TEST(Npy, Bf16IsWrittenAsF32) {
  TempDir tmp;
  const Tensor t = make_tensor(DType::kBF16, 2, 5);
  const std::string path = tmp.file("bf16.npy");
  write_npy(path, t.view().col_slice(1, 3));  // strided, too
  EXPECT_NE(read_bytes(path).find("'descr': '<f4'"), std::string::npos);
  const Tensor back = read_npy(path);
  ASSERT_EQ(back.dtype(), DType::kF32);
  ASSERT_EQ(back.rows(), 2);
  ASSERT_EQ(back.cols(), 3);
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 3; ++c) EXPECT_EQ(get_f32(back, r, c), get_f32(t, r, c + 1));
}

TEST(Npy, EmptyAndLargeShapes) {
  TempDir tmp;
  const Tensor e(DType::kI32, 0, 3);
  write_npy(tmp.file("e.npy"), e.view());
  const Tensor back = read_npy(tmp.file("e.npy"));
  EXPECT_EQ(back.rows(), 0);
  EXPECT_EQ(back.cols(), 3);
  const Tensor big = make_tensor(DType::kF32, 1, 100000);
  write_npy(tmp.file("big.npy"), big.view());
  EXPECT_TRUE(same_bytes(read_npy(tmp.file("big.npy")).view(), big.view()));
}

std::string npy_with_header(std::string dict, const std::string& data, int major = 1) {
  const std::size_t prefix = major == 1 ? 10 : 12;
  dict.append((64 - (prefix + dict.size() + 1) % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>((dict.size() >> 8) & 0xff);
  if (major != 1) out += std::string(2, '\0');
  return out + dict + data;
}

TEST(Npy, ReadsOneDimAndVersion2) {
  TempDir tmp;
  std::string data(12, '\0');
  const std::int32_t vals[3] = {7, -8, 9};
  std::memcpy(data.data(), vals, 12);
  write_bytes(tmp.file("v.npy"),
              npy_with_header("{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }", data));
  Tensor t = read_npy(tmp.file("v.npy"));
  EXPECT_EQ(t.rows(), 1);
  EXPECT_EQ(t.cols(), 3);
  EXPECT_EQ(t.ptr<std::int32_t>()[1], -8);
  write_bytes(tmp.file("v2.npy"),
              npy_with_header("{'descr': '|i1', 'fortran_order': False, 'shape': (2, 2), }",
                              std::string("\x01\x02\x03\x04", 4), 2));
  t = read_npy(tmp.file("v2.npy"));
  EXPECT_EQ(t.dtype(), DType::kI8);
  EXPECT_EQ(t.ptr<std::int8_t>()[3], 4);
}

TEST(Npy, MalformedFiles) {
  TempDir tmp;
  const std::string p = tmp.file("bad.npy");
  auto bad = [&](const std::string& bytes, const std::vector<std::string>& parts) {
    write_bytes(p, bytes);
    std::vector<std::string> all = parts;
    all.push_back("bad.npy");
    expect_io_error([&] { read_npy(p); }, all);
  };
  const std::string d16(16, '\0');
  bad("", {"too short"});
  bad("NOTNUMPYxxxxxxxx", {"bad magic"});
  bad(std::string("\x93NUMPY\x01\x00\xff\xff", 10), {"larger than the file"});
  bad(std::string("\x93NUMPY\x09\x00\x00\x00", 10), {"version"});
  bad(npy_with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", d16),
      {"descr", ">f4"});
  bad(npy_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 1), }", d16), {"<f8"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", d16),
      {"Fortran"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 2), }", d16),
      {"rank-3"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }", d16),
      {"truncated"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 2), }", d16),
      {"non-negative"});
  bad(npy_with_header(
          "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999, 2), }", d16),
      {"too large"});
  bad(npy_with_header(
          "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", d16),
      {"truncated"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': False, }", d16), {"'shape'"});
  bad(npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2", ""), {"shape"});
  expect_io_error([&] { read_npy(tmp.file("missing.npy")); }, {"missing.npy", "no such file"});
}

// In memory: parse_npy_header / parse_npy read what read_npy reads from a file.
TEST(Npy, InMemoryParseMatchesTheFile) {
  TempDir tmp;
  const Tensor a = make_tensor(DType::kI32, 3, 5);
  write_npy(tmp.file("a.npy"), a.view());
  const std::string bytes = read_bytes(tmp.file("a.npy"));
  const NpyHeader h = parse_npy_header(bytes, bytes.size(), "a.npy");
  EXPECT_EQ(h.dtype, DType::kI32);
  EXPECT_EQ(h.rows, 3);
  EXPECT_EQ(h.cols, 5);
  EXPECT_EQ(h.nbytes, 60u);
  EXPECT_EQ(h.data_offset + h.nbytes, bytes.size());
  EXPECT_TRUE(same_bytes(parse_npy(bytes, "a.npy").view(), a.view()));
  // Only the header given: the size is checked against the whole file's.
  EXPECT_EQ(parse_npy_header(bytes.substr(0, h.data_offset), bytes.size(), "a.npy").nbytes, 60u);
  expect_io_error([&] { parse_npy(bytes.substr(0, bytes.size() - 1), "a.npy"); }, {"truncated"});
  expect_io_error([&] { parse_npy_header(bytes.substr(0, 40), bytes.size(), "a.npy"); },
                  {"short read of the header"});
}

// In memory: parse_header reads what open() reads.
TEST_F(Malformed, InMemoryParseMatchesOpen) {
  const Tensor a = make_tensor(DType::kBF16, 2, 3);
  const std::string path = tmp_.file("a.safetensors");
  write_safetensors(path, {{"a", a.view()}}, {{"k", "v"}});
  const std::string bytes = read_bytes(path);
  const SafetensorsFile f = SafetensorsFile::open(path);
  const SafetensorsFile g = SafetensorsFile::parse_header(bytes, bytes.size(), path);
  EXPECT_EQ(f.names(), g.names());
  EXPECT_EQ(f.byte_range("a"), g.byte_range("a"));
  EXPECT_EQ(g.byte_range("a").second, bytes.size());
  EXPECT_EQ(g.metadata().at("k"), "v");
  EXPECT_TRUE(same_bytes(g.read("a").view(), a.view()));
  const std::string cut = bytes.substr(0, bytes.size() - 1);
  expect_io_error([&] { SafetensorsFile::parse_header(cut, cut.size(), path); },
                  {"outside the file"});
  expect_io_error([&] { SafetensorsFile::parse_header(bytes, cut.size(), path); },
                  {"header bytes given for a file of"});
}

// Found with the harnesses (crashes/safetensors/deep_dtype, crashes/safetensors_index/deep.json):
// a header nested 200000 levels deep overflowed the stack when the error message dumped the
// dtype; JSON nested deeper than kMaxJsonDepth is now refused as malformed.
TEST_F(Malformed, DeeplyNestedJsonIsRefusedNotAStackOverflow) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string h =
      R"({"t": {"dtype": )" + deep + R"(, "shape": [1], "data_offsets": [0, 4]}})";
  expect_open_fails(le64(h.size()) + h + std::string(4, '\0'), {"not valid JSON", "nest"});
  TempDir tmp;
  write_bytes(tmp.file("model.safetensors.index.json"), R"({"weight_map": {"a": )" + deep + "}}");
  expect_io_error([&] { SafetensorsDir::open(tmp.path().string()); },
                  {"not valid JSON", "nest", "index.json"});
  // A realistic header is far below the limit.
  const std::string ok = R"({"__metadata__": {"k": "[[[[[[[["}, "t": {"dtype": "F32", )"
                         R"("shape": [1], "data_offsets": [0, 4]}})";
  EXPECT_EQ(SafetensorsFile::parse_header(le64(ok.size()) + ok + std::string(4, '\0'),
                                          8 + ok.size() + 4, "ok")
                .names()
                .size(),
            1u);
}

// Found by the index harness (crashes/safetensors_index/nul_in_name.json): a shard name holding
// a NUL byte passed the "inside the directory" check on the whole name while the OS sees the
// path cut at the NUL ("..\0x" is the parent directory itself).
TEST(SafetensorsDir, NulByteInShardNameIsRefused) {
  const std::string text = R"({"weight_map": {"a": "..\u0000x"}})";
  expect_io_error([&] { SafetensorsDir::parse_index(text, "index.json"); },
                  {"index.json", "'a'", "NUL"});
  EXPECT_EQ(SafetensorsDir::parse_index(R"({"weight_map": {"a": "s/x.safetensors"}})", "i").at("a"),
            "s/x.safetensors");
}

}  // namespace
}  // namespace tpl
