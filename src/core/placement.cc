#include "tpl/placement.h"

#include "tpl/error.h"

namespace tpl {

std::string Placement::to_string() const {
  switch (kind) {
    case PlacementKind::kReplicated:
      return "Replicated";
    case PlacementKind::kPartial:
      return "Partial";
    case PlacementKind::kShard:
      return dim == 0 ? "Shard(tokens)" : "Shard(features)";
  }
  return "?";
}

ShardRange shard_range(std::int64_t total, int parts, int index) {
  const Where w{"shard_range"};
  TPL_CHECK_GE(parts, 1, w);
  TPL_CHECK(index >= 0 && index < parts, w, "index ", index, " not in [0, ", parts, ")");
  TPL_CHECK_GE(total, 0, w);
  const std::int64_t base = total / parts;
  const std::int64_t extra = total % parts;
  const std::int64_t offset = index * base + (index < extra ? index : extra);
  return {offset, base + (index < extra ? 1 : 0)};
}

ShardRange shard_range_units(std::int64_t units, std::int64_t unit, int parts, int index) {
  ShardRange r = shard_range(units, parts, index);
  return {r.offset * unit, r.size * unit};
}

}  // namespace tpl
