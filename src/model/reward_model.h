// A reward model at inference: a backbone with a scalar head (a *ForSequenceClassification
// folder with one label, as `rlhf rm train` writes it), read at the last real token, and its
// normalisation (gain * raw + bias, stored in config.json). Stages that need rewards (PPO,
// the pipeline's evaluation, `rlhf rm score`) score text through this; none includes the
// reward trainer.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "data/collate.h"
#include "model/model.h"

namespace rlhf {

// Loads a reward model; Error when the folder holds no scalar-head model.
LoadedModel load_reward_model(const std::string& path, const LoadOptions& options = {});

// The raw score (B) of a collated batch of prompt+completion rows: the head at each row's
// last real token. Differentiable (the reward trainer's loss uses it).
torch::Tensor raw_reward_scores(Transformer& rm, const std::vector<TokenizedExample>& examples, int32_t pad);

// Normalised rewards (gain * raw + bias) of prompt+completion texts, in batches; `raw`, when
// given, receives the raw scores.
std::vector<double> score_texts(LoadedModel& rm, const std::vector<std::pair<std::string, std::string>>& texts,
                                int64_t max_length, int64_t batch_size = 16, std::vector<double>* raw = nullptr);

}  // namespace rlhf
