// Shared by the fuzz harnesses: FUZZ_CHECK aborts (a crash libFuzzer reports and the replay tests
// fail on) when an invariant of a successful parse does not hold. Errors the parsers report by
// their typed exceptions are expected; a crash, undefined behaviour, a hang, an exception of
// another type or a broken invariant is a bug.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

#define FUZZ_CHECK(cond, ...)                                                           \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                \
      std::fprintf(stderr, "\n");                                                       \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

namespace tpl::fuzz {

inline std::string_view as_chars(const unsigned char* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// An exception of a type the parser's contract does not allow: report it and abort.
[[noreturn]] inline void unexpected_exception(const char* what) {
  std::fprintf(stderr, "unexpected exception type escaped the parser: %s\n", what);
  std::abort();
}

}  // namespace tpl::fuzz
