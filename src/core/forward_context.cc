#include "tpl/forward_context.h"

#include <algorithm>

#include "tpl/error.h"
#include "tpl/placement.h"

namespace tpl {

ForwardContext ForwardContext::make(const Config& config, const Features& features,
                                    const ModelInfo& model, std::int64_t num_tokens,
                                    std::vector<std::int64_t> tokens_across_dp,
                                    bool is_draft_model) {
  const Where w{"forward context"};
  TPL_CHECK_GE(num_tokens, 0, w);
  const int tp = config.layout.tp;
  ForwardContext ctx;
  ctx.num_tokens = num_tokens;
  ctx.mmrs_fusion = tp <= 8;
  if (model.is_moe) {
    ctx.flash_comm_v1_enabled = features.enable_sp;
    ctx.mmrs_fusion = false;
  } else if (is_draft_model) {
    ctx.flash_comm_v1_enabled = false;
  } else {
    ctx.flash_comm_v1_enabled = features.enable_sp && num_tokens > config.flashcomm1_threshold;
  }
  ctx.flashcomm_v2_enabled = features.flashcomm2 && tp > 1;
  if (!tokens_across_dp.empty()) {
    TPL_CHECK_EQ(static_cast<int>(tokens_across_dp.size()), config.layout.dp, w,
                 "tokens_across_dp needs one entry per DP replica");
    TPL_CHECK(std::find(tokens_across_dp.begin(), tokens_across_dp.end(), num_tokens) !=
                  tokens_across_dp.end(),
              w, "num_tokens ", num_tokens, " is not among tokens_across_dp");
  }
  if (ctx.flash_comm_v1_enabled || ctx.flashcomm_v2_enabled) {
    if (tokens_across_dp.size() > 1) {
      const std::int64_t max_tokens =
          *std::max_element(tokens_across_dp.begin(), tokens_across_dp.end());
      ctx.pad_size = ceil_div(max_tokens, tp) * tp - num_tokens;
    } else {
      ctx.pad_size = pad_to_multiple(num_tokens, tp);
    }
  }
  ctx.tokens_across_dp = std::move(tokens_across_dp);
  return ctx;
}

}  // namespace tpl
