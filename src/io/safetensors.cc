#include "tpl/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string_view>

#include "tpl/error.h"
#include "tpl/json_text.h"

namespace tpl {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O copies raw little-endian bytes");

namespace fs = std::filesystem;
using json = nlohmann::json;

const Where kWhere{"safetensors"};
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
constexpr std::size_t kMaxNamesInMessage = 5;

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

bool parse_st_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kTable[] = {{"F32", DType::kF32},
                                                         {"BF16", DType::kBF16},
                                                         {"F16", DType::kF16},
                                                         {"I8", DType::kI8},
                                                         {"I32", DType::kI32}};
  for (const auto& [name, t] : kTable) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

// "N tensors; e.g. a, b, c" for not-found messages.
std::string some_names(const std::vector<std::string>& names) {
  std::ostringstream os;
  os << names.size() << " tensor" << (names.size() == 1 ? "" : "s");
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i == kMaxNamesInMessage) {
      os << ", ...";
      break;
    }
    os << (i == 0 ? "; e.g. " : ", ") << "'" << names[i] << "'";
  }
  return os.str();
}

std::uint64_t file_size_or_throw(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) TPL_THROW(IoError, kWhere, "cannot open '", path, "': no such file");
  if (!fs::is_regular_file(st)) TPL_THROW(IoError, kWhere, "'", path, "' is not a regular file");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) TPL_THROW(IoError, kWhere, "cannot stat '", path, "': ", ec.message());
  return size;
}

std::ifstream open_stream(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) TPL_THROW(IoError, kWhere, "cannot open '", path, "' for reading");
  return in;
}

// Reads exactly n bytes at absolute offset `pos`.
void read_at(std::ifstream& in, const std::string& path, const std::string& name, std::uint64_t pos,
             void* dst, std::size_t n) {
  if (n == 0) return;
  in.clear();
  in.seekg(static_cast<std::streamoff>(pos));
  in.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
  if (!in || static_cast<std::size_t>(in.gcount()) != n) {
    TPL_THROW(IoError, kWhere, "'", path, "': short read of tensor '", name, "' (", n,
              " bytes at offset ", pos, "); the file was truncated or changed after open");
  }
}

std::uint64_t get_unsigned(const json& j, const std::string& path, const std::string& name,
                           const char* field) {
  if (!j.is_number_unsigned()) {
    TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': ", field,
              " must hold non-negative integers, got ", j.dump());
  }
  return j.get<std::uint64_t>();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// TensorInfo

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

std::int64_t TensorInfo::rows() const {
  TPL_CHECK_LE(shape.size(), std::size_t{2}, Where{"TensorInfo"},
               "only tensors of rank <= 2 have a 2-D view; shape is ", shape_str(shape));
  return shape.size() == 2 ? shape[0] : 1;
}

std::int64_t TensorInfo::cols() const {
  TPL_CHECK_LE(shape.size(), std::size_t{2}, Where{"TensorInfo"},
               "only tensors of rank <= 2 have a 2-D view; shape is ", shape_str(shape));
  return shape.empty() ? 1 : shape.back();
}

std::string TensorInfo::describe() const {
  return dtype_name(dtype) + shape_str(shape);
}

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI8:
      return "I8";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

namespace {
std::uint64_t decode_u64le(std::string_view b) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[i]);
  return v;
}
}  // namespace

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  const std::uint64_t size = file_size_or_throw(path);
  std::ifstream in = open_stream(path);
  // The length field and, when it fits the file, the header; parse_header checks both.
  std::string prefix(static_cast<std::size_t>(std::min<std::uint64_t>(size, 8)), '\0');
  in.read(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  if (static_cast<std::size_t>(in.gcount()) != prefix.size())
    TPL_THROW(IoError, kWhere, "'", path, "': cannot read the header length");
  if (prefix.size() == 8) {
    const std::uint64_t header_len = decode_u64le(prefix);
    if (header_len <= size - 8) {
      prefix.resize(static_cast<std::size_t>(8 + header_len));
      in.read(prefix.data() + 8, static_cast<std::streamsize>(header_len));
      if (static_cast<std::uint64_t>(in.gcount()) != header_len) {
        TPL_THROW(IoError, kWhere, "'", path, "': short read of the ", header_len, "-byte header");
      }
    }
  }
  return parse_header(prefix, size, path);
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, const std::string& name) {
  SafetensorsFile f = parse_header(bytes, bytes.size(), name);
  f.bytes_ = std::make_shared<const std::string>(std::move(bytes));
  return f;
}

SafetensorsFile SafetensorsFile::parse_header(std::string_view bytes, std::uint64_t size,
                                              const std::string& path) {
  if (bytes.size() > size) {
    TPL_THROW(IoError, kWhere, "'", path, "': ", bytes.size(), " header bytes given for a file of ",
              size, " bytes");
  }
  if (size < 8) {
    TPL_THROW(IoError, kWhere, "'", path, "' is shorter than 8 bytes (", size,
              " bytes): not a safetensors file (truncated?)");
  }
  if (bytes.size() < 8) TPL_THROW(IoError, kWhere, "'", path, "': cannot read the header length");
  const std::uint64_t header_len = decode_u64le(bytes);
  if (header_len > size - 8) {
    TPL_THROW(IoError, kWhere, "'", path, "': header length ", header_len,
              " is larger than the file (", size, " bytes, ", size - 8,
              " after the length field); truncated or not a safetensors file");
  }
  if (header_len > bytes.size() - 8) {
    TPL_THROW(IoError, kWhere, "'", path, "': short read of the ", header_len, "-byte header");
  }
  const std::string_view header = bytes.substr(8, static_cast<std::size_t>(header_len));

  json j;
  try {
    j = parse_json(header);
  } catch (const json::exception& e) {
    TPL_THROW(IoError, kWhere, "'", path, "': header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) {
    TPL_THROW(IoError, kWhere, "'", path, "': header must be a JSON object, got ", j.type_name());
  }

  SafetensorsFile f;
  f.path_ = path;
  const std::uint64_t data_start = 8 + header_len;
  const std::uint64_t data_size = size - data_start;
  for (const auto& [name, v] : j.items()) {
    if (name == kMetadataKey) {
      if (!v.is_object()) {
        TPL_THROW(IoError, kWhere, "'", path, "': ", kMetadataKey, " must be an object");
      }
      for (const auto& [k, s] : v.items()) {
        if (!s.is_string()) {
          TPL_THROW(IoError, kWhere, "'", path, "': ", kMetadataKey, " value for '", k,
                    "' must be a string, got ", s.dump());
        }
        f.metadata_[k] = s.get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': entry must be an object");
    }
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end()) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name,
                "': entry needs 'dtype', 'shape' and 'data_offsets'");
    }
    Entry e;
    if (!dt->is_string() || !parse_st_dtype(dt->get<std::string>(), &e.info.dtype)) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': unknown or unsupported dtype ",
                dt->dump(), " (supported: F32, BF16, F16, I8, I32)");
    }
    if (!sh->is_array()) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': shape must be an array");
    }
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : *sh) {
      const std::uint64_t dim = get_unsigned(d, path, name, "shape");
      overflow = overflow || dim > static_cast<std::uint64_t>(INT64_MAX) ||
                 __builtin_mul_overflow(numel, dim, &numel);
      e.info.shape.push_back(static_cast<std::int64_t>(dim));
    }
    std::uint64_t nbytes = 0;
    overflow = overflow || numel > static_cast<std::uint64_t>(INT64_MAX) ||
               __builtin_mul_overflow(numel, dtype_size(e.info.dtype), &nbytes);
    if (!off->is_array() || off->size() != 2) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name,
                "': data_offsets must be [begin, end], got ", off->dump());
    }
    const std::uint64_t begin = get_unsigned((*off)[0], path, name, "data_offsets");
    const std::uint64_t end = get_unsigned((*off)[1], path, name, "data_offsets");
    if (begin > end) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': data_offsets [", begin, ", ",
                end, "] have begin > end");
    }
    if (end > data_size) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name,
                "': header points outside the file:", " data_offsets [", begin, ", ", end,
                "] exceed the ", data_size, "-byte data section (truncated file?)");
    }
    if (overflow || nbytes != end - begin) {
      TPL_THROW(IoError, kWhere, "'", path, "': tensor '", name, "': shape ",
                shape_str(e.info.shape), " of ", safetensors_dtype_name(e.info.dtype),
                (overflow ? " overflows" : " needs "),
                (overflow ? std::string() : std::to_string(nbytes)), " bytes but data_offsets [",
                begin, ", ", end, "] span ", end - begin, " (shape/offset mismatch)");
    }
    e.begin = data_start + begin;
    e.end = data_start + end;
    f.entries_.emplace(name, std::move(e));
  }
  return f;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return entries_.count(name) != 0;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    TPL_THROW(IoError, kWhere, "tensor '", name, "' not found in '", path_, "' (",
              some_names(names()), ")");
  }
  return it->second;
}

const SafetensorsFile::Entry& SafetensorsFile::entry_2d(const std::string& name) const {
  const Entry& e = entry(name);
  if (e.info.shape.size() > 2) {
    TPL_THROW(IoError, kWhere, "'", path_, "': tensor '", name, "' has shape ",
              shape_str(e.info.shape), " (rank ", e.info.shape.size(),
              "); only tensors of rank <= 2 can be read");
  }
  return e;
}

TensorInfo SafetensorsFile::info(const std::string& name) const {
  return entry(name).info;
}

std::pair<std::uint64_t, std::uint64_t> SafetensorsFile::byte_range(const std::string& name) const {
  const Entry& e = entry(name);
  return {e.begin, e.end};
}

// One read's bytes: a stream of its own for a file (so that const reads may run concurrently),
// or a copy out of the bytes from_bytes() holds.
class SafetensorsFile::Source {
 public:
  explicit Source(const SafetensorsFile& f) : f_(f) {
    if (!f.bytes_) in_ = open_stream(f.path_);
  }
  // Exactly n bytes at absolute offset `pos` of the file.
  void read(const std::string& name, std::uint64_t pos, void* dst, std::size_t n) {
    if (!f_.bytes_) return read_at(in_, f_.path_, name, pos, dst, n);
    const std::string& b = *f_.bytes_;
    // parse_header put every tensor inside the bytes; checked again since a copy past them
    // would read another object's memory.
    if (pos > b.size() || n > b.size() - pos) {
      TPL_THROW(IoError, kWhere, "'", f_.path_, "': tensor '", name, "': ", n, " bytes at offset ",
                pos, " lie outside the ", b.size(), " bytes held");
    }
    if (n > 0) std::memcpy(dst, b.data() + pos, n);
  }

 private:
  const SafetensorsFile& f_;
  std::ifstream in_;
};

Tensor SafetensorsFile::read(const std::string& name) const {
  const Entry& e = entry_2d(name);
  Tensor t(e.info.dtype, e.info.rows(), e.info.cols());
  if (t.nbytes() == 0) return t;
  Source(*this).read(name, e.begin, t.data(), t.nbytes());
  return t;
}

Tensor SafetensorsFile::read_rows(const std::string& name, std::int64_t row_offset,
                                  std::int64_t rows) const {
  const Entry& e = entry_2d(name);
  const std::int64_t R = e.info.rows(), C = e.info.cols();
  if (row_offset < 0 || rows < 0 || row_offset > R || rows > R - row_offset) {
    TPL_THROW(IoError, kWhere, "'", path_, "': tensor '", name, "' ", e.info.describe(),
              ": row slice [", row_offset, ", ", row_offset, " + ", rows,
              ") is out of range (rows: ", R, ")");
  }
  Tensor t(e.info.dtype, rows, C);
  if (t.nbytes() == 0) return t;
  const std::uint64_t esz = dtype_size(e.info.dtype);
  Source(*this).read(name, e.begin + static_cast<std::uint64_t>(row_offset * C) * esz, t.data(),
                     t.nbytes());
  return t;
}

Tensor SafetensorsFile::read_cols(const std::string& name, std::int64_t col_offset,
                                  std::int64_t cols) const {
  const Entry& e = entry_2d(name);
  const std::int64_t R = e.info.rows(), C = e.info.cols();
  if (col_offset < 0 || cols < 0 || col_offset > C || cols > C - col_offset) {
    TPL_THROW(IoError, kWhere, "'", path_, "': tensor '", name, "' ", e.info.describe(),
              ": column slice [", col_offset, ", ", col_offset, " + ", cols,
              ") is out of range (cols: ", C, ")");
  }
  if (col_offset == 0 && cols == C) return read(name);
  Tensor t(e.info.dtype, R, cols);
  if (t.nbytes() == 0) return t;
  const std::uint64_t esz = dtype_size(e.info.dtype);
  const std::size_t row_bytes = static_cast<std::size_t>(cols) * esz;
  Source in(*this);
  for (std::int64_t r = 0; r < R; ++r) {
    const std::uint64_t pos = e.begin + static_cast<std::uint64_t>(r * C + col_offset) * esz;
    in.read(name, pos, t.view().at(r, 0), row_bytes);
  }
  return t;
}

// ---------------------------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const Where where{"write_safetensors"};
  json header = json::object();
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (const auto& [name, v] : tensors) {
    TPL_CHECK(!name.empty() && name != kMetadataKey, where, "invalid tensor name '", name, "'");
    TPL_CHECK(seen.insert(name).second, where, "duplicate tensor name '", name, "'");
    TPL_CHECK(v.device() == Device::kHost, where, "tensor '", name, "' is not on the host");
    TPL_CHECK(v.empty() || v.data() != nullptr, where, "tensor '", name, "' has no data");
    const std::uint64_t n = v.nbytes();
    header[name] = {{"dtype", safetensors_dtype_name(v.dtype())},
                    {"shape", {v.rows(), v.cols()}},
                    {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    TPL_THROW(InvalidArgument, where, "cannot encode the header for '", path, "': ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) TPL_THROW(IoError, where, "cannot open '", path, "' for writing");
  unsigned char len_bytes[8];
  std::uint64_t len = text.size();
  for (unsigned char& b : len_bytes) {
    b = static_cast<unsigned char>(len & 0xff);
    len >>= 8;
  }
  out.write(reinterpret_cast<const char*>(len_bytes), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const auto& [name, v] : tensors) {
    if (v.empty()) continue;
    if (v.contiguous()) {
      out.write(static_cast<const char*>(v.data()), static_cast<std::streamsize>(v.nbytes()));
    } else {
      const auto row_bytes = static_cast<std::streamsize>(v.cols() * dtype_size(v.dtype()));
      for (std::int64_t r = 0; r < v.rows(); ++r)
        out.write(static_cast<const char*>(v.at(r, 0)), row_bytes);
    }
  }
  out.close();
  if (!out) TPL_THROW(IoError, where, "failed writing '", path, "'");
}

// ---------------------------------------------------------------------------------------------
// SafetensorsDir

std::map<std::string, std::string> SafetensorsDir::parse_index(std::string_view text,
                                                               const std::string& path) {
  json j;
  try {
    j = parse_json(text);
  } catch (const json::exception& e) {
    TPL_THROW(IoError, kWhere, "'", path, "' is not valid JSON: ", e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
    TPL_THROW(IoError, kWhere, "'", path, "' has no \"weight_map\" object");
  }
  std::map<std::string, std::string> out;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string() || file.get<std::string>().empty()) {
      TPL_THROW(IoError, kWhere, "'", path, "': weight_map entry for '", name,
                "' must be a file name, got ", file.dump());
    }
    const std::string rel = file.get<std::string>();
    if (rel.find('\0') != std::string::npos) {
      TPL_THROW(IoError, kWhere, "'", path, "': weight_map entry for '", name,
                "' holds a NUL byte, which would cut the path short: ", file.dump());
    }
    const fs::path rp(rel);
    if (rp.is_absolute() ||
        std::any_of(rp.begin(), rp.end(), [](const fs::path& c) { return c == ".."; })) {
      TPL_THROW(IoError, kWhere, "'", path, "': weight_map entry for '", name,
                "' points outside the checkpoint directory: '", rel, "'");
    }
    out[name] = rel;
  }
  return out;
}

SafetensorsDir SafetensorsDir::open(const std::string& dir) {
  SafetensorsDir d;
  d.path_ = dir;
  std::error_code ec;
  const fs::path root(dir);
  auto add_single = [&d](const std::string& file, const std::string& key) {
    SafetensorsFile f = SafetensorsFile::open(file);
    for (const std::string& n : f.names()) d.weight_map_[n] = key;
    d.files_.emplace(key, std::move(f));
  };
  if (fs::is_regular_file(root, ec)) {
    add_single(dir, root.filename().string());
    return d;
  }
  if (!fs::is_directory(root, ec)) {
    TPL_THROW(IoError, kWhere, "checkpoint '", dir, "' is neither a directory nor a file");
  }
  const fs::path index = root / kIndexName;
  if (!fs::exists(index, ec)) {
    const fs::path single = root / kSingleName;
    if (!fs::exists(single, ec)) {
      TPL_THROW(IoError, kWhere, "checkpoint directory '", dir, "' has neither ", kIndexName,
                " nor ", kSingleName);
    }
    add_single(single.string(), kSingleName);
    return d;
  }

  std::ifstream in(index, std::ios::binary);
  if (!in) TPL_THROW(IoError, kWhere, "cannot open '", index.string(), "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) TPL_THROW(IoError, kWhere, "cannot read '", index.string(), "'");
  for (const auto& [name, rel] : parse_index(text, index.string())) {
    if (!d.files_.count(rel))
      d.files_.emplace(rel, SafetensorsFile::open((root / fs::path(rel)).string()));
    if (!d.files_.at(rel).contains(name)) {
      TPL_THROW(IoError, kWhere, "'", index.string(), "' maps tensor '", name, "' to '", rel,
                "', which has no such tensor (", some_names(d.files_.at(rel).names()), ")");
    }
    d.weight_map_[name] = rel;
  }
  return d;
}

std::vector<std::string> SafetensorsDir::names() const {
  std::vector<std::string> out;
  out.reserve(weight_map_.size());
  for (const auto& kv : weight_map_) out.push_back(kv.first);
  return out;
}

bool SafetensorsDir::contains(const std::string& name) const {
  return weight_map_.count(name) != 0;
}

const SafetensorsFile& SafetensorsDir::file_for(const std::string& name) const {
  const auto it = weight_map_.find(name);
  if (it == weight_map_.end()) {
    TPL_THROW(IoError, kWhere, "tensor '", name, "' not found in checkpoint '", path_, "' (",
              some_names(names()), ")");
  }
  return files_.at(it->second);
}

TensorInfo SafetensorsDir::info(const std::string& name) const {
  return file_for(name).info(name);
}

Tensor SafetensorsDir::read(const std::string& name) const {
  return file_for(name).read(name);
}

Tensor SafetensorsDir::read_rows(const std::string& name, std::int64_t row_offset,
                                 std::int64_t rows) const {
  return file_for(name).read_rows(name, row_offset, rows);
}

Tensor SafetensorsDir::read_cols(const std::string& name, std::int64_t col_offset,
                                 std::int64_t cols) const {
  return file_for(name).read_cols(name, col_offset, cols);
}

}  // namespace tpl
