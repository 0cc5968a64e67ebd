// Per-batch state the ops read (seed-spec §4). The seed keeps it in a global "current forward
// context"; here it is a value the caller builds for each batch and passes to every op.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "tpl/config.h"

namespace tpl {

struct ForwardContext {
  std::int64_t num_tokens = 0;  // tokens of this DP replica's batch (N)
  // Tokens of every DP replica, indexed by DP rank; empty means "all equal to num_tokens".
  std::vector<std::int64_t> tokens_across_dp;
  std::int64_t pad_size = 0;  // rows appended to reach N' (a multiple of TP) under FC1/FC2
  bool flash_comm_v1_enabled = false;
  bool flashcomm_v2_enabled = false;
  bool mmrs_fusion = false;  // fused GEMM + reduce-scatter allowed for this batch
  std::optional<int> layer_idx;
  // Which op variant of each layer runs this batch (LinearLayer::add_variant): the strategy of
  // a plan's bucket in a DecoderStack built from a Plan; 0 otherwise.
  int variant = 0;

  std::int64_t padded_tokens() const { return num_tokens + pad_size; }  // N'

  // §4: FC1 for dense main models only when num_tokens > threshold, for MoE always, for dense
  // draft models never; mmrs_fusion = TP <= 8 and not MoE; pad_size to the next multiple of TP,
  // equalised to the largest replica when tokens_across_dp has more than one entry.
  static ForwardContext make(const Config& config, const Features& features, const ModelInfo& model,
                             std::int64_t num_tokens,
                             std::vector<std::int64_t> tokens_across_dp = {},
                             bool is_draft_model = false);
};

}  // namespace tpl
