#include "tpl/npy.h"

#include <bit>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <vector>

#include "tpl/error.h"

namespace tpl {
namespace {

static_assert(std::endian::native == std::endian::little, "npy I/O copies raw little-endian bytes");

namespace fs = std::filesystem;

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;

const char* npy_descr(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kBF16:  // written as f32
      return "<f4";
    case DType::kF16:
      return "<f2";
    case DType::kI8:
      return "<i1";
    case DType::kI32:
      return "<i4";
  }
  return "?";
}

// Minimal parser for the header dict NumPy writes:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class DictParser {
 public:
  DictParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  // Position right after "'key'<spaces>:<spaces>"; throws if the key is missing.
  std::size_t value_pos(const char* key) const {
    for (const char q : {'\'', '"'}) {
      const std::string quoted = std::string(1, q) + key + q;
      std::size_t p = text_.find(quoted);
      if (p == std::string_view::npos) continue;
      p = skip_ws(p + quoted.size());
      if (p < text_.size() && text_[p] == ':') return skip_ws(p + 1);
    }
    fail("header has no '", key, "' entry");
  }

  std::string string_value(const char* key) const {
    std::size_t p = value_pos(key);
    if (p >= text_.size() || (text_[p] != '\'' && text_[p] != '"'))
      fail("'", key, "' is not a string");
    const char q = text_[p];
    const std::size_t e = text_.find(q, p + 1);
    if (e == std::string_view::npos) fail("unterminated string for '", key, "'");
    return std::string(text_.substr(p + 1, e - p - 1));
  }

  bool bool_value(const char* key) const {
    const std::size_t p = value_pos(key);
    if (text_.substr(p, 4) == "True") return true;
    if (text_.substr(p, 5) == "False") return false;
    fail("'", key, "' must be True or False");
  }

  std::vector<std::int64_t> tuple_value(const char* key) const {
    std::size_t p = value_pos(key);
    if (p >= text_.size() || text_[p] != '(') fail("'", key, "' is not a tuple");
    std::vector<std::int64_t> dims;
    p = skip_ws(p + 1);
    while (p < text_.size() && text_[p] != ')') {
      if (!std::isdigit(static_cast<unsigned char>(text_[p])))
        fail("'", key, "' must hold non-negative integers");
      std::int64_t v = 0;
      while (p < text_.size() && std::isdigit(static_cast<unsigned char>(text_[p]))) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, text_[p] - '0', &v))
          fail("'", key, "' dimension is too large");
        ++p;
      }
      dims.push_back(v);
      p = skip_ws(p);
      if (p < text_.size() && text_[p] == ',')
        p = skip_ws(p + 1);
      else if (p < text_.size() && text_[p] != ')')
        fail("malformed '", key, "' tuple");
    }
    if (p >= text_.size()) fail("unterminated '", key, "' tuple");
    return dims;
  }

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    TPL_THROW(IoError, Where{"read_npy"}, "'", path_, "': ", std::forward<Args>(args)...,
              " (header: ", text_, ")");
  }

 private:
  std::size_t skip_ws(std::size_t p) const {
    while (p < text_.size() && std::isspace(static_cast<unsigned char>(text_[p]))) ++p;
    return p;
  }
  std::string_view text_;
  const std::string& path_;
};

}  // namespace

void write_npy(const std::string& path, TensorView t) {
  const Where where{"write_npy"};
  TPL_CHECK(t.device() == Device::kHost, where, "tensor for '", path, "' is not on the host");
  TPL_CHECK(t.empty() || t.data() != nullptr, where, "tensor for '", path, "' has no data");
  std::string header = std::string("{'descr': '") + npy_descr(t.dtype()) +
                       "', 'fortran_order': False, 'shape': (" + std::to_string(t.rows()) + ", " +
                       std::to_string(t.cols()) + "), }";
  const std::size_t prefix = kMagicLen + 2 + 2;  // magic, version, u16 header length
  const std::size_t unpadded = prefix + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) TPL_THROW(IoError, where, "cannot open '", path, "' for writing");
  out.write(kMagic, kMagicLen);
  const unsigned char version_and_len[4] = {1, 0, static_cast<unsigned char>(header.size() & 0xff),
                                            static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(version_and_len), 4);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  if (!t.empty()) {
    if (t.dtype() == DType::kBF16) {
      std::vector<float> row(static_cast<std::size_t>(t.cols()));
      for (std::int64_t r = 0; r < t.rows(); ++r) {
        convert_to_f32(t.at(r, 0), DType::kBF16, row.data(), row.size());
        out.write(reinterpret_cast<const char*>(row.data()),
                  static_cast<std::streamsize>(row.size() * sizeof(float)));
      }
    } else if (t.contiguous()) {
      out.write(static_cast<const char*>(t.data()), static_cast<std::streamsize>(t.nbytes()));
    } else {
      const auto row_bytes = static_cast<std::streamsize>(t.cols() * dtype_size(t.dtype()));
      for (std::int64_t r = 0; r < t.rows(); ++r)
        out.write(static_cast<const char*>(t.at(r, 0)), row_bytes);
    }
  }
  out.close();
  if (!out) TPL_THROW(IoError, where, "failed writing '", path, "'");
}

Tensor read_npy(const std::string& path) {
  const Where where{"read_npy"};
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) TPL_THROW(IoError, where, "cannot open '", path, "': no such file");
  if (!fs::is_regular_file(st)) TPL_THROW(IoError, where, "'", path, "' is not a regular file");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) TPL_THROW(IoError, where, "cannot stat '", path, "': ", ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, where, "cannot open '", path, "' for reading");

  unsigned char pre[12] = {};
  if (size < 10) TPL_THROW(IoError, where, "'", path, "' is too short for a .npy file");
  in.read(reinterpret_cast<char*>(pre), 10);
  if (std::memcmp(pre, kMagic, kMagicLen) != 0)
    TPL_THROW(IoError, where, "'", path, "' is not a .npy file (bad magic)");
  const int major = pre[6];
  std::uint64_t prefix = 10;
  std::uint64_t hlen = pre[8] | (static_cast<std::uint64_t>(pre[9]) << 8);
  if (major == 2 || major == 3) {
    if (size < 12) TPL_THROW(IoError, where, "'", path, "' is too short for a .npy v2 file");
    in.read(reinterpret_cast<char*>(pre + 10), 2);
    hlen |=
        (static_cast<std::uint64_t>(pre[10]) << 16) | (static_cast<std::uint64_t>(pre[11]) << 24);
    prefix = 12;
  } else if (major != 1) {
    TPL_THROW(IoError, where, "'", path, "': unsupported .npy version ", major, ".",
              static_cast<int>(pre[7]));
  }
  if (hlen > size - prefix) {
    TPL_THROW(IoError, where, "'", path, "': header length ", hlen, " is larger than the file (",
              size, " bytes)");
  }
  std::string header(static_cast<std::size_t>(hlen), '\0');
  in.read(header.data(), static_cast<std::streamsize>(hlen));
  if (static_cast<std::uint64_t>(in.gcount()) != hlen)
    TPL_THROW(IoError, where, "'", path, "': short read of the header");

  const DictParser dict(header, path);
  const std::string descr = dict.string_value("descr");
  if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '|' && descr[0] != '=')) {
    dict.fail("unsupported descr '", descr, "' (only little-endian f4, f2, i1, i4)");
  }
  DType dtype;
  const std::string_view kind(descr.data() + 1, 2);
  if (kind == "f4")
    dtype = DType::kF32;
  else if (kind == "f2")
    dtype = DType::kF16;
  else if (kind == "i1")
    dtype = DType::kI8;
  else if (kind == "i4")
    dtype = DType::kI32;
  else
    dict.fail("unsupported descr '", descr, "' (only f4, f2, i1, i4)");
  if (dict.bool_value("fortran_order")) dict.fail("Fortran-order arrays are not supported");
  const std::vector<std::int64_t> shape = dict.tuple_value("shape");
  if (shape.size() > 2) dict.fail("rank-", shape.size(), " arrays are not supported (rank <= 2)");
  const std::int64_t rows = shape.size() == 2 ? shape[0] : 1;
  const std::int64_t cols = shape.empty() ? 1 : shape.back();

  const std::uint64_t available = size - prefix - hlen;
  std::int64_t nbytes = 0;
  if (__builtin_mul_overflow(rows, cols, &nbytes) ||
      __builtin_mul_overflow(nbytes, static_cast<std::int64_t>(dtype_size(dtype)), &nbytes) ||
      static_cast<std::uint64_t>(nbytes) > available) {
    TPL_THROW(IoError, where, "'", path, "': shape (", rows, ", ", cols, ") of ", descr,
              " needs more data than the file holds (", available, " bytes): truncated?");
  }
  Tensor t(dtype, rows, cols);
  if (nbytes > 0) {
    in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(nbytes));
    if (in.gcount() != nbytes) TPL_THROW(IoError, where, "'", path, "': short read of the data");
  }
  return t;
}

}  // namespace tpl
