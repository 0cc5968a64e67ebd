#include "tpl/error.h"

#include <cstring>

namespace tpl::detail {

std::string prefix(const Where& where, const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  std::ostringstream os;
  if (where.rank >= 0) os << "[rank " << where.rank << "] ";
  if (!where.what.empty()) os << where.what << ": ";
  os << "(" << (base ? base + 1 : file) << ":" << line << ") ";
  return os.str();
}

}  // namespace tpl::detail
