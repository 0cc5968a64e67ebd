// NumPy .npy files (format v1.0 written; v1.0, v2.0 and v3.0 read). See docs/io.md.
//
// write_npy stores a host view as a C-order 2-D array of shape (rows, cols) with descr '<f4'
// (f32), '<f2' (f16), '<i1' (int8) or '<i4' (int32). bf16 has no NumPy dtype: it is written
// converted to '<f4' (exact, every bf16 value is an f32), so reading it back gives an f32 tensor.
// The header is padded with spaces and ends in '\n' so that magic + header is a multiple of 64.
//
// read_npy accepts little-endian (or byte-order-free) f4, f2, i1, i4, C order only, rank <= 2
// (a scalar reads as [1, 1], a 1-D (n,) as [1, n]); anything else, or a truncated file, throws
// IoError naming the file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "tpl/tensor.h"

namespace tpl {

void write_npy(const std::string& path, TensorView t);
Tensor read_npy(const std::string& path);

// What read_npy reads from a file's header.
struct NpyHeader {
  DType dtype = DType::kF32;
  std::int64_t rows = 0, cols = 0;  // the 2-D shape read_npy returns
  std::uint64_t data_offset = 0;    // magic, version, length field and header
  std::uint64_t nbytes = 0;         // rows * cols * dtype size; data_offset + nbytes <= file size
};
// read_npy's checks without the reading: `bytes` is the start of a file of `file_size` bytes
// (bytes.size() <= file_size): the magic, version, length field and the whole header, or all of
// the file when it is shorter. IoError naming `path` exactly where read_npy would throw it
// (read_npy calls this). The fuzz harness (tests/fuzz) calls it and parse_npy.
NpyHeader parse_npy_header(std::string_view bytes, std::uint64_t file_size,
                           const std::string& path);
// read_npy of a whole file held in memory.
Tensor parse_npy(std::string_view file, const std::string& path);

}  // namespace tpl
