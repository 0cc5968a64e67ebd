#include "tpl/json_text.h"

#include <string>

namespace tpl {

std::size_t json_nesting_depth(std::string_view text) {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char ch : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (ch == '\\')
        escaped = true;
      else if (ch == '"')
        in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      if (++depth > deepest) deepest = depth;
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

nlohmann::json parse_json(std::string_view text) {
  const std::size_t depth = json_nesting_depth(text);
  if (depth > kMaxJsonDepth) {
    throw nlohmann::json::parse_error::create(101, 0,
                                              "arrays and objects nest " + std::to_string(depth) +
                                                  " levels deep; at most " +
                                                  std::to_string(kMaxJsonDepth) + " are accepted",
                                              nullptr);
  }
  return nlohmann::json::parse(text.begin(), text.end());
}

bool json_int64(const nlohmann::json& v, std::int64_t* out) {
  if (!v.is_number_integer() ||
      (v.is_number_unsigned() && v.get<std::uint64_t>() > std::uint64_t{INT64_MAX}))
    return false;
  *out = v.get<std::int64_t>();
  return true;
}

}  // namespace tpl
