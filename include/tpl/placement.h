// The layout vocabulary. Every activation that crosses an op boundary has a placement over
// the op's group:
//   Replicated        every member holds the whole tensor;
//   Shard(tokens)     member r holds a block of rows (dim 0);
//   Shard(features)   member r holds a block of columns (dim 1, the last dim);
//   Partial           every member holds a full-shape tensor whose sum over members is the
//                     value (the output of a row-parallel GEMM before its reduction).
// A communication strategy is a change of placement: all-reduce is Partial -> Replicated,
// reduce-scatter is Partial -> Shard(tokens), all-gather is Shard -> Replicated, all-to-all
// is Shard(features) -> Shard(tokens).
#pragma once

#include <cstdint>
#include <string>

namespace tpl {

enum class PlacementKind { kReplicated, kShard, kPartial };

struct Placement {
  PlacementKind kind = PlacementKind::kReplicated;
  int dim = -1;  // 0 (tokens) or 1 (features) for kShard

  static Placement replicated() { return {PlacementKind::kReplicated, -1}; }
  static Placement shard(int dim) { return {PlacementKind::kShard, dim}; }
  static Placement shard_tokens() { return shard(0); }
  static Placement shard_features() { return shard(1); }
  static Placement partial() { return {PlacementKind::kPartial, -1}; }

  bool operator==(const Placement& o) const { return kind == o.kind && dim == o.dim; }
  std::string to_string() const;  // "Replicated", "Shard(tokens)", "Shard(features)", "Partial"
};

// A contiguous block [offset, offset + size) of an axis.
struct ShardRange {
  std::int64_t offset = 0;
  std::int64_t size = 0;
  bool operator==(const ShardRange& o) const { return offset == o.offset && size == o.size; }
};

// Uneven split rule (documented in docs/architecture.md): an axis of `total` elements split
// into `parts` blocks gives the first (total % parts) members one extra element. Blocks are
// contiguous and in member order. Throws InvalidArgument if parts < 1 or index out of range.
ShardRange shard_range(std::int64_t total, int parts, int index);

// Same rule for a units-of-`unit` axis (e.g. heads of head_dim features).
ShardRange shard_range_units(std::int64_t units, std::int64_t unit, int parts, int index);

inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}
// Rows to append so that n becomes a multiple of m (0 when it already is).
inline std::int64_t pad_to_multiple(std::int64_t n, std::int64_t m) {
  return (m - n % m) % m;
}

}  // namespace tpl
