// Fuzz harness: model.safetensors.index.json (SafetensorsDir::parse_index, which open() calls).
// After a successful parse every shard file must be a non-empty relative path that stays inside
// the checkpoint directory: not absolute, no ".." component, and no NUL byte (which the OS
// would cut the path at).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_check.h"
#include "tpl/error.h"
#include "tpl/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace fs = std::filesystem;
  try {
    const auto map = tpl::SafetensorsDir::parse_index(tpl::fuzz::as_chars(data, size),
                                                      "fuzz/model.safetensors.index.json");
    for (const auto& [name, rel] : map) {
      FUZZ_CHECK(!rel.empty(), "empty shard name for '%s'", name.c_str());
      FUZZ_CHECK(rel.find('\0') == std::string::npos, "shard name with a NUL byte");
      const fs::path p(rel);
      FUZZ_CHECK(!p.is_absolute() && !p.has_root_path(), "absolute shard path '%s'", rel.c_str());
      for (const fs::path& c : p)
        FUZZ_CHECK(c != "..", "shard path '%s' leaves the directory", rel.c_str());
      const fs::path joined = (fs::path("/ckpt") / p).lexically_normal();
      const std::string js = joined.string();
      FUZZ_CHECK(js.rfind("/ckpt/", 0) == 0, "shard '%s' resolves to '%s'", rel.c_str(),
                 js.c_str());
    }
  } catch (const tpl::IoError&) {
    // Expected: malformed indexes are IoError.
  } catch (const std::exception& e) {
    tpl::fuzz::unexpected_exception(e.what());
  }
  return 0;
}
