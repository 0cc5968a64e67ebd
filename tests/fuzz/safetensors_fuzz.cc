// Fuzz harness: a whole safetensors file, held in memory (SafetensorsFile::from_bytes, which
// runs the parse_header that open() calls). After a successful parse every tensor must lie
// inside the data section, its size must equal its shape times its dtype size (computed here
// without overflow), its dtype must be one of the enum's values, and its 2-D view must hold the
// same number of elements. Then the tensor data is read: read(), and read_rows() / read_cols()
// with slices derived from the input, must return exactly the file's bytes of those elements,
// and slices out of range (negative, past the end, near INT64_MAX) must throw IoError.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/safetensors.h"

namespace {
using u128 = unsigned __int128;

bool known_dtype(tpl::DType t) {
  switch (t) {
    case tpl::DType::kF32:
    case tpl::DType::kBF16:
    case tpl::DType::kF16:
    case tpl::DType::kI8:
    case tpl::DType::kI32:
      return true;
  }
  return false;
}

// A slice [offset, offset + count) of [0, n), chosen by h: every offset and count in range is
// reachable, the empty slice and the whole range included.
std::pair<std::int64_t, std::int64_t> slice_of(std::uint64_t h, std::int64_t n) {
  const std::int64_t offset = static_cast<std::int64_t>(h % (static_cast<std::uint64_t>(n) + 1));
  const std::uint64_t left = static_cast<std::uint64_t>(n - offset) + 1;
  return {offset, static_cast<std::int64_t>((h / (static_cast<std::uint64_t>(n) + 1)) % left)};
}

void expect_out_of_range(const tpl::SafetensorsFile& f, const std::string& name, bool rows,
                         std::int64_t offset, std::int64_t count) {
  try {
    if (rows)
      (void)f.read_rows(name, offset, count);
    else
      (void)f.read_cols(name, offset, count);
  } catch (const tpl::IoError&) {
    return;
  }
  FUZZ_CHECK(false, "%s slice [%lld, +%lld) of '%s' did not throw", rows ? "row" : "column",
             static_cast<long long>(offset), static_cast<long long>(count), name.c_str());
}

// The tensor's data as read() and the slicing reads return it, against the input's bytes.
void check_reads(const tpl::SafetensorsFile& f, const std::string& name, std::string_view bytes,
                 std::uint64_t h) {
  const tpl::TensorInfo info = f.info(name);
  const auto [begin, end] = f.byte_range(name);
  const std::int64_t R = info.rows(), C = info.cols();
  const std::size_t esz = tpl::dtype_size(info.dtype);
  const tpl::Tensor whole = f.read(name);
  FUZZ_CHECK(whole.dtype() == info.dtype && whole.rows() == R && whole.cols() == C,
             "read('%s') has another shape", name.c_str());
  FUZZ_CHECK(whole.nbytes() == end - begin &&
                 (whole.nbytes() == 0 ||
                  std::memcmp(whole.data(), bytes.data() + begin, whole.nbytes()) == 0),
             "read('%s') returned other bytes than the file's", name.c_str());

  const auto [r0, nr] = slice_of(h, R);
  const tpl::Tensor rows = f.read_rows(name, r0, nr);
  FUZZ_CHECK(rows.rows() == nr && rows.cols() == C, "read_rows('%s') has another shape",
             name.c_str());
  const std::size_t row_bytes = static_cast<std::size_t>(C) * esz;
  FUZZ_CHECK(
      nr == 0 || C == 0 ||
          std::memcmp(rows.data(), bytes.data() + begin + r0 * row_bytes, nr * row_bytes) == 0,
      "read_rows('%s', %lld, %lld) returned other bytes", name.c_str(), static_cast<long long>(r0),
      static_cast<long long>(nr));

  const auto [c0, nc] = slice_of(h >> 20, C);
  const tpl::Tensor cols = f.read_cols(name, c0, nc);
  FUZZ_CHECK(cols.rows() == R && cols.cols() == nc, "read_cols('%s') has another shape",
             name.c_str());
  for (std::int64_t r = 0; r < R && nc > 0; ++r) {
    FUZZ_CHECK(std::memcmp(cols.view().at(r, 0), bytes.data() + begin + r * row_bytes + c0 * esz,
                           static_cast<std::size_t>(nc) * esz) == 0,
               "read_cols('%s', %lld, %lld): row %lld holds other bytes", name.c_str(),
               static_cast<long long>(c0), static_cast<long long>(nc), static_cast<long long>(r));
  }

  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  for (const bool by_rows : {true, false}) {
    const std::int64_t n = by_rows ? R : C;
    expect_out_of_range(f, name, by_rows, -1, 1);
    expect_out_of_range(f, name, by_rows, 0, -1);
    expect_out_of_range(f, name, by_rows, n, 1);
    expect_out_of_range(f, name, by_rows, 1, kMax);
    expect_out_of_range(f, name, by_rows, kMax, kMax);
  }
}

void check(const tpl::SafetensorsFile& f, std::string_view bytes) {
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i)
    header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  FUZZ_CHECK(header_len <= bytes.size() - 8, "header length %llu, file %zu bytes",
             static_cast<unsigned long long>(header_len), bytes.size());
  const std::uint64_t data_start = 8 + header_len;
  std::string prev;
  bool first = true;
  for (const std::string& name : f.names()) {
    FUZZ_CHECK(first || prev < name, "names not sorted and unique");
    FUZZ_CHECK(name != "__metadata__", "__metadata__ listed as a tensor");
    FUZZ_CHECK(f.contains(name), "listed tensor not contained");
    first = false;
    prev = name;
    const tpl::TensorInfo info = f.info(name);
    FUZZ_CHECK(known_dtype(info.dtype), "dtype %d out of range", static_cast<int>(info.dtype));
    u128 numel = 1;
    for (std::int64_t d : info.shape) {
      FUZZ_CHECK(d >= 0, "negative dimension");
      numel *= static_cast<u128>(d);
      if (numel > (u128{1} << 64)) break;  // the size check below fails
    }
    const auto [begin, end] = f.byte_range(name);
    FUZZ_CHECK(data_start <= begin && begin <= end && end <= bytes.size(),
               "tensor '%s' [%llu, %llu) outside the data section [%llu, %zu)", name.c_str(),
               static_cast<unsigned long long>(begin), static_cast<unsigned long long>(end),
               static_cast<unsigned long long>(data_start), bytes.size());
    const u128 nbytes = numel * tpl::dtype_size(info.dtype);
    FUZZ_CHECK(nbytes == end - begin, "tensor '%s': shape needs a size other than its range",
               name.c_str());
    FUZZ_CHECK(static_cast<u128>(info.nbytes()) == nbytes, "TensorInfo::nbytes overflowed");
    FUZZ_CHECK(static_cast<u128>(info.numel()) == numel, "TensorInfo::numel overflowed");
    (void)info.describe();
    if (info.shape.size() <= 2) {
      const std::int64_t r = info.rows(), c = info.cols();
      FUZZ_CHECK(r >= 0 && c >= 0 && static_cast<u128>(r) * static_cast<u128>(c) == numel,
                 "2-D view [%lld, %lld] of '%s' has another element count",
                 static_cast<long long>(r), static_cast<long long>(c), name.c_str());
      check_reads(f, name, bytes, static_cast<std::uint64_t>(begin) * 0x9E3779B97F4A7C15ull ^ end);
    } else {
      try {
        (void)info.rows();
        FUZZ_CHECK(false, "rows() of a rank-%zu tensor did not throw", info.shape.size());
      } catch (const tpl::InvalidArgument&) {
      }
    }
  }
  try {
    (void)f.info(std::string("\x01 not a tensor name"));
    FUZZ_CHECK(false, "info() of a missing tensor did not throw");
  } catch (const tpl::IoError&) {
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes = tpl::fuzz::as_chars(data, size);
  try {
    const tpl::SafetensorsFile f = tpl::SafetensorsFile::from_bytes(std::string(bytes), "fuzz");
    check(f, bytes);
  } catch (const tpl::IoError&) {
    // Expected: the contract reports every malformed header as IoError.
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  return 0;
}
