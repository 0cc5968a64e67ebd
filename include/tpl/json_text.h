// JSON text as tplinear's loaders parse it: the safetensors header and index, config.json, the
// tplinear config and the plan (their from_file functions and the in-memory parsers).
//
// nlohmann::json parses iteratively, but copying, dumping and comparing a value recurse once per
// level of nesting, so a document nested some 100000 levels deep (a few hundred KB of '[')
// would overflow the stack wherever a loader copies or prints part of it. parse_json refuses
// nesting deeper than kMaxJsonDepth before parsing; real checkpoints and configs nest a few
// levels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

namespace tpl {

inline constexpr std::size_t kMaxJsonDepth = 256;

// The deepest nesting of arrays and objects in `text`, brackets inside strings not counted
// (malformed text gives some number; the parser then reports it).
std::size_t json_nesting_depth(std::string_view text);

// nlohmann::json::parse(text), except that nesting deeper than kMaxJsonDepth throws
// nlohmann::json::parse_error too, so callers report it as they report malformed JSON.
nlohmann::json parse_json(std::string_view text);

// Whether `v` is a JSON integer that fits int64_t, and then its value in *out. A float (2.0,
// 1e300) is not one: the loaders take integer fields only of JSON's integer kind, so that no
// value is truncated or converted out of range (undefined behaviour).
bool json_int64(const nlohmann::json& v, std::int64_t* out);

}  // namespace tpl
