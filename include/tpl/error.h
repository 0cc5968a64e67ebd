// Error policy (see docs/errors.md):
//  * The library throws typed exceptions derived from tpl::Error; only main() maps them to exit
//    codes. Nothing in the library prints-and-exits.
//  * Every message says what was wrong, where (op or component) and on which rank.
//  * Every foreign status (MPI, oneDNN, CUDA, NCCL, cuBLAS) is checked at the call site with a
//    per-library macro that names the failing call.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace tpl {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};
// A caller passed something malformed: shapes, dtypes, sizes, arguments.
class InvalidArgument : public Error {
  using Error::Error;
};
// A configuration (JSON, flags, group sizes) is invalid or self-contradictory.
class ConfigError : public Error {
  using Error::Error;
};
// A valid request this build or backend cannot serve.
class Unsupported : public Error {
  using Error::Error;
};
// A communication library reported a failure.
class CommError : public Error {
  using Error::Error;
};
// A compute library (oneDNN, cuBLASLt, CUDA) reported a failure.
class BackendError : public Error {
  using Error::Error;
};
// A file could not be read or parsed.
class IoError : public Error {
  using Error::Error;
};
// Host memory ran out, or would: an allocation failed, or an estimate made before allocating
// exceeds what the machine has (tpl/memory.h).
class OutOfMemory : public Error {
  using Error::Error;
};

// Where an error happened: component/op name and rank (-1 when not known).
struct Where {
  std::string what;
  int rank = -1;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
std::string prefix(const Where& where, const char* file, int line);
}  // namespace detail

}  // namespace tpl

// TPL_CHECK(cond, ExceptionType, where, message parts...)
#define TPL_CHECK_T(cond, Exc, where, ...)                                          \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      throw Exc(::tpl::detail::prefix((where), __FILE__, __LINE__) +                \
                ::tpl::detail::concat("check failed: " #cond ". ", ##__VA_ARGS__)); \
    }                                                                               \
  } while (0)
#define TPL_CHECK(cond, where, ...) TPL_CHECK_T(cond, ::tpl::InvalidArgument, where, ##__VA_ARGS__)

// Binary checks print both operands' values.
#define TPL_CHECK_OP_T(a, op, b, Exc, where, ...)                                              \
  do {                                                                                         \
    const auto& tpl_a_ = (a);                                                                  \
    const auto& tpl_b_ = (b);                                                                  \
    if (!(tpl_a_ op tpl_b_)) {                                                                 \
      throw Exc(::tpl::detail::prefix((where), __FILE__, __LINE__) +                           \
                ::tpl::detail::concat("check failed: " #a " " #op " " #b " (", tpl_a_, " vs ", \
                                      tpl_b_, "). ", ##__VA_ARGS__));                          \
    }                                                                                          \
  } while (0)
#define TPL_CHECK_EQ(a, b, where, ...) \
  TPL_CHECK_OP_T(a, ==, b, ::tpl::InvalidArgument, where, ##__VA_ARGS__)
#define TPL_CHECK_LE(a, b, where, ...) \
  TPL_CHECK_OP_T(a, <=, b, ::tpl::InvalidArgument, where, ##__VA_ARGS__)
#define TPL_CHECK_LT(a, b, where, ...) \
  TPL_CHECK_OP_T(a, <, b, ::tpl::InvalidArgument, where, ##__VA_ARGS__)
#define TPL_CHECK_GE(a, b, where, ...) \
  TPL_CHECK_OP_T(a, >=, b, ::tpl::InvalidArgument, where, ##__VA_ARGS__)
#define TPL_CHECK_GT(a, b, where, ...) \
  TPL_CHECK_OP_T(a, >, b, ::tpl::InvalidArgument, where, ##__VA_ARGS__)

#define TPL_THROW(Exc, where, ...) \
  throw Exc(::tpl::detail::prefix((where), __FILE__, __LINE__) + ::tpl::detail::concat(__VA_ARGS__))
