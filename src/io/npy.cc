#include "tpl/npy.h"

#include <algorithm>
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

namespace {
// The magic, version and header-length field at the start of `b` (of a file of `size` bytes):
// sets the prefix length (10 or 12) and the header length, checked against the file size.
void header_extent(std::string_view b, std::uint64_t size, const std::string& path,
                   std::uint64_t* prefix, std::uint64_t* hlen) {
  const Where where{"read_npy"};
  if (b.size() > size)
    TPL_THROW(IoError, where, "'", path, "': ", b.size(), " bytes given for a file of ", size);
  if (size < 10 || b.size() < 10)
    TPL_THROW(IoError, where, "'", path, "' is too short for a .npy file");
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(b[i]); };
  if (std::memcmp(b.data(), kMagic, kMagicLen) != 0)
    TPL_THROW(IoError, where, "'", path, "' is not a .npy file (bad magic)");
  const int major = byte(6);
  *prefix = 10;
  *hlen = byte(8) | (static_cast<std::uint64_t>(byte(9)) << 8);
  if (major == 2 || major == 3) {
    if (size < 12 || b.size() < 12)
      TPL_THROW(IoError, where, "'", path, "' is too short for a .npy v2 file");
    *hlen |=
        (static_cast<std::uint64_t>(byte(10)) << 16) | (static_cast<std::uint64_t>(byte(11)) << 24);
    *prefix = 12;
  } else if (major != 1) {
    TPL_THROW(IoError, where, "'", path, "': unsupported .npy version ", major, ".",
              static_cast<int>(byte(7)));
  }
  if (*hlen > size - *prefix) {
    TPL_THROW(IoError, where, "'", path, "': header length ", *hlen, " is larger than the file (",
              size, " bytes)");
  }
}
}  // namespace

NpyHeader parse_npy_header(std::string_view bytes, std::uint64_t size, const std::string& path) {
  const Where where{"read_npy"};
  std::uint64_t prefix = 0, hlen = 0;
  header_extent(bytes, size, path, &prefix, &hlen);
  if (hlen > bytes.size() - prefix)
    TPL_THROW(IoError, where, "'", path, "': short read of the header");
  const std::string_view header = bytes.substr(prefix, static_cast<std::size_t>(hlen));

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
  NpyHeader h;
  h.dtype = dtype;
  h.rows = rows;
  h.cols = cols;
  h.data_offset = prefix + hlen;
  h.nbytes = static_cast<std::uint64_t>(nbytes);
  return h;
}

Tensor parse_npy(std::string_view file, const std::string& path) {
  const NpyHeader h = parse_npy_header(file, file.size(), path);
  Tensor t(h.dtype, h.rows, h.cols);
  if (h.nbytes > 0) std::memcpy(t.data(), file.data() + h.data_offset, h.nbytes);
  return t;
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

  // The prefix and, when it fits the file, the header; parse_npy_header checks everything.
  std::string head(static_cast<std::size_t>(std::min<std::uintmax_t>(size, 12)), '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  if (static_cast<std::size_t>(in.gcount()) != head.size())
    TPL_THROW(IoError, where, "'", path, "': short read of the header");
  std::uint64_t prefix = 0, hlen = 0;
  header_extent(head, size, path, &prefix, &hlen);
  head.resize(static_cast<std::size_t>(prefix + hlen));
  if (hlen + prefix > 12) {
    in.read(head.data() + 12, static_cast<std::streamsize>(prefix + hlen - 12));
    if (static_cast<std::uint64_t>(in.gcount()) != prefix + hlen - 12)
      TPL_THROW(IoError, where, "'", path, "': short read of the header");
  }
  const NpyHeader h = parse_npy_header(head, size, path);
  Tensor t(h.dtype, h.rows, h.cols);
  if (h.nbytes > 0) {
    in.clear();
    in.seekg(static_cast<std::streamoff>(h.data_offset));
    in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(h.nbytes));
    if (static_cast<std::uint64_t>(in.gcount()) != h.nbytes)
      TPL_THROW(IoError, where, "'", path, "': short read of the data");
  }
  return t;
}

}  // namespace tpl
