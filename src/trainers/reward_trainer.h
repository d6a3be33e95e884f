// Reward model training: the policy's backbone with a scalar head read at the last real
// token, fitted to preference pairs with the Bradley-Terry loss; then its output is
// normalized so the reference policy's own samples score mean 0, std 1.
#pragma once
#include <string>
#include <vector>

#include "data/datasets.h"
#include "model/model.h"
#include "train/train_loop.h"

namespace rlhf {

struct RewardConfig {
  TrainConfig train;
  std::string data_format = "auto";  // auto | preferences | rankings
  bool group_by_prompt = false;      // all pairs of one prompt in one batch (batch_size counts prompts)
  bool share_prompt = true;          // chosen and rejected in one row after one prompt (data/collate.h)
  int64_t norm_samples = 64;         // reference-policy samples for reward normalization; 0: off
  int64_t norm_max_new_tokens = 64;
  double norm_temperature = 1.0;

  RewardConfig() {
    train.run_dir = "runs/rm";
    train.lr = 1e-4;
  }
  template <class V>
  void visit(V&& v) {
    visit_train_fields(train, v);
    v("data_format", data_format, "auto (by the fields of the first line), preferences or rankings");
    v("group_by_prompt", group_by_prompt, "Keep all pairs of one prompt in one batch; batch_size then counts prompts");
    v("share_prompt", share_prompt, "Compute each pair's prompt once for both completions (the same results, fewer tokens); false: a row per completion");
    v("norm_samples", norm_samples, "Samples of the reference policy (`model`) for reward normalization; 0: off");
    v("norm_max_new_tokens", norm_max_new_tokens, "Length of those samples (use PPO's max_new_tokens)");
    v("norm_temperature", norm_temperature, "Sampling temperature of those samples (use PPO's temperature)");
  }
};

// Range checks of every field (an Error naming the field and the value).
void validate(const RewardConfig& c);

Metrics train_reward_model(RewardConfig cfg, bool resume, int64_t stop_after = 0);

}  // namespace rlhf
