// Fuzz harness: the safetensors header (SafetensorsFile::parse_header, which open() calls). The
// input is a whole file. After a successful parse every tensor must lie inside the data section,
// its size must equal its shape times its dtype size (computed here without overflow), its dtype
// must be one of the enum's values, and its 2-D view must hold the same number of elements.
#include <cstddef>
#include <cstdint>
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
    const tpl::SafetensorsFile f = tpl::SafetensorsFile::parse_header(bytes, size, "fuzz");
    check(f, bytes);
  } catch (const tpl::IoError&) {
    // Expected: the contract reports every malformed header as IoError.
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  return 0;
}
