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

#include <string>

#include "tpl/tensor.h"

namespace tpl {

void write_npy(const std::string& path, TensorView t);
Tensor read_npy(const std::string& path);

}  // namespace tpl
