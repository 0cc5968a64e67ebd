// Fuzz harness: .npy files (parse_npy_header, which read_npy calls, and parse_npy). The input is
// a whole file. After a successful parse the dtype must be one of the enum's values, the shape
// non-negative, the data size rows * cols * dtype size (computed here without overflow) and
// data_offset + size within the file; parse_npy must allocate no more than that size.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using u128 = unsigned __int128;
  const std::string_view bytes = tpl::fuzz::as_chars(data, size);
  try {
    const tpl::NpyHeader h = tpl::parse_npy_header(bytes, size, "fuzz.npy");
    FUZZ_CHECK(h.dtype == tpl::DType::kF32 || h.dtype == tpl::DType::kF16 ||
                   h.dtype == tpl::DType::kI8 || h.dtype == tpl::DType::kI32,
               "dtype %d", static_cast<int>(h.dtype));
    FUZZ_CHECK(h.rows >= 0 && h.cols >= 0, "negative shape");
    const u128 nbytes =
        static_cast<u128>(h.rows) * static_cast<u128>(h.cols) * tpl::dtype_size(h.dtype);
    FUZZ_CHECK(nbytes == h.nbytes, "nbytes %llu is not rows * cols * size",
               static_cast<unsigned long long>(h.nbytes));
    FUZZ_CHECK(h.data_offset >= 10 && h.data_offset <= size && h.nbytes <= size - h.data_offset,
               "data [%llu, +%llu) outside the %zu-byte file",
               static_cast<unsigned long long>(h.data_offset),
               static_cast<unsigned long long>(h.nbytes), size);
    const tpl::Tensor t = tpl::parse_npy(bytes, "fuzz.npy");
    FUZZ_CHECK(t.dtype() == h.dtype && t.rows() == h.rows && t.cols() == h.cols,
               "parse_npy's tensor differs from the header");
    FUZZ_CHECK(static_cast<std::uint64_t>(t.nbytes()) == h.nbytes, "tensor size");
    FUZZ_CHECK(h.nbytes == 0 || std::memcmp(t.data(), data + h.data_offset, h.nbytes) == 0,
               "tensor data differs from the file");
  } catch (const tpl::IoError&) {
    // Expected: malformed files are IoError.
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  return 0;
}
