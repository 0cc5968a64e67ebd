// Reading and writing the safetensors checkpoint format
// (https://github.com/huggingface/safetensors) and sharded HuggingFace checkpoint directories. See
// docs/io.md.
//
// Layout: an 8-byte little-endian u64 N, N bytes of JSON header
//   {"name": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}   (metadata optional)
// then the raw little-endian data; offsets are relative to the end of the header.
//
// Supported dtypes: F32, BF16, F16, I8, I32. Tensors are returned 2-D: a scalar becomes [1, 1],
// a 1-D [n] becomes [1, n], a 2-D [r, c] stays [r, c]; reading a tensor of rank > 2 is an error
// (its info is still available). Reads go through std::ifstream with seeks, so a rank that
// needs only its shard reads only that shard's bytes; a file held in memory (from_bytes) is
// read by copying from it.
//
// The whole header is validated by open(); every problem (truncated file, oversized header,
// bad JSON, unknown dtype, size/offset mismatch, offsets outside the data section, missing
// tensor, out-of-range slice) throws tpl::IoError naming the file and the tensor. Objects are
// immutable after open(); const methods may be called concurrently (each read opens its own
// stream).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tpl/dtype.h"
#include "tpl/tensor.h"

namespace tpl {

struct TensorInfo {
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;  // as stored in the file (any rank)

  std::int64_t numel() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }
  // The 2-D shape read() returns ([] -> [1, 1], [n] -> [1, n]); InvalidArgument for rank > 2.
  std::int64_t rows() const;
  std::int64_t cols() const;
  std::string describe() const;  // e.g. "bf16[4096, 1024]"
};

// safetensors dtype strings ("F32", "BF16", "F16", "I8", "I32").
const char* safetensors_dtype_name(DType t);

class SafetensorsFile {
 public:
  // Reads and validates the header; throws IoError on any problem.
  static SafetensorsFile open(const std::string& path);
  // open() without the reading: `bytes` is the start of a file of `file_size` bytes
  // (bytes.size() <= file_size): the 8-byte length field and the whole header, or all of the
  // file when it is shorter. Every check open() makes is made here (open() reads the prefix and
  // calls this), so it throws IoError exactly where open() would; `path` names the file in
  // messages and is the file later reads open. The fuzz harness (tests/fuzz) calls it.
  static SafetensorsFile parse_header(std::string_view bytes, std::uint64_t file_size,
                                      const std::string& path);
  // A file already in memory (a checkpoint the caller has read, received or generated): `bytes`
  // is all of it. It is validated as open() validates a file, and every read copies from it;
  // `name` only names the file in messages. The fuzz harness reads tensors through it.
  static SafetensorsFile from_bytes(std::string bytes, const std::string& name);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  TensorInfo info(const std::string& name) const;
  // Absolute file offsets [begin, end) of the tensor's bytes: within the data section, and
  // end - begin == info(name).nbytes().
  std::pair<std::uint64_t, std::uint64_t> byte_range(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Whole tensor as a new contiguous host tensor of the stored dtype.
  Tensor read(const std::string& name) const;
  // Rows [row_offset, row_offset + rows) of the 2-D view: one seek, one contiguous read.
  Tensor read_rows(const std::string& name, std::int64_t row_offset, std::int64_t rows) const;
  // Columns [col_offset, col_offset + cols) of the 2-D view: one seek and read per row.
  Tensor read_cols(const std::string& name, std::int64_t col_offset, std::int64_t cols) const;

 private:
  struct Entry {
    TensorInfo info;
    std::uint64_t begin = 0;  // absolute file offset of the first byte
    std::uint64_t end = 0;
  };
  const Entry& entry(const std::string& name) const;
  const Entry& entry_2d(const std::string& name) const;
  class Source;  // where one read's bytes come from: a stream of path_, or bytes_

  std::string path_;
  std::shared_ptr<const std::string> bytes_;  // from_bytes(): the whole file; null: read path_
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (host views, any stride) as [rows, cols] in the given order. Names must be
// unique, non-empty and not "__metadata__". The header is padded with spaces to a multiple of 8
// bytes, as the reference implementation does. Throws IoError when the file cannot be written.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, TensorView>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// A checkpoint directory: either model.safetensors.index.json ({"weight_map": {name: file}},
// files relative to the directory) or a single model.safetensors. `open` also accepts the path
// of a .safetensors file. Every shard's header is validated at open, and every name in the
// weight_map must exist in the file it maps to.
class SafetensorsDir {
 public:
  static SafetensorsDir open(const std::string& dir);
  // The weight_map of a model.safetensors.index.json (`text`, named `path` in messages):
  // tensor name -> shard file relative to the directory. IoError when the text is not JSON, has
  // no "weight_map" object, or an entry is not a non-empty relative path inside the directory.
  // open() calls it; the shards are not opened here.
  static std::map<std::string, std::string> parse_index(std::string_view text,
                                                        const std::string& path);

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  TensorInfo info(const std::string& name) const;
  // The shard that holds `name`.
  const SafetensorsFile& file_for(const std::string& name) const;

  Tensor read(const std::string& name) const;
  Tensor read_rows(const std::string& name, std::int64_t row_offset, std::int64_t rows) const;
  Tensor read_cols(const std::string& name, std::int64_t col_offset, std::int64_t cols) const;

 private:
  std::string path_;
  std::map<std::string, SafetensorsFile> files_;   // by file name relative to path_
  std::map<std::string, std::string> weight_map_;  // tensor name -> key in files_
};

}  // namespace tpl
