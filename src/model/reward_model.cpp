#include "model/reward_model.h"

#include "core/error.h"

namespace rlhf {

LoadedModel load_reward_model(const std::string& path, const LoadOptions& options) {
  auto lm = load_model(path, options);
  check(lm.config.num_labels == 1, path + ": not a reward model (expected a ForSequenceClassification "
                                          "model with num_labels = 1, got num_labels = " +
                                       std::to_string(lm.config.num_labels) + ")");
  return lm;
}

torch::Tensor raw_reward_scores(Transformer& rm, const std::vector<TokenizedExample>& examples, int32_t pad) {
  const auto dev = rm->device();
  auto b = collate(examples, pad);
  return rm->scores(b.input_ids.to(dev), b.attention_mask.to(dev)).squeeze(-1);
}

std::vector<double> score_texts(LoadedModel& rm, const std::vector<std::pair<std::string, std::string>>& texts,
                                int64_t max_length, int64_t batch_size, std::vector<double>* raw) {
  check(rm.tokenizer != nullptr, "reward model has no tokenizer");
  check(batch_size > 0, "score_texts: batch_size must be positive");
  torch::NoGradGuard no_grad;
  rm.model->eval();
  const int32_t pad = training_pad_id(*rm.tokenizer);
  std::vector<double> out;
  for (size_t begin = 0; begin < texts.size(); begin += batch_size) {
    std::vector<TokenizedExample> xs;
    for (size_t i = begin; i < std::min(texts.size(), begin + size_t(batch_size)); ++i)
      // No EOS appended: the reward is read at the last text token, where transformers'
      // sequence classifier reads it too.
      xs.push_back(tokenize_example(*rm.tokenizer, texts[i].first, texts[i].second, max_length, /*add_eos=*/false));
    auto r = raw_reward_scores(rm.model, xs, pad).to(torch::kCPU, torch::kDouble).contiguous();
    const double* x = r.data_ptr<double>();
    for (int64_t i = 0; i < r.size(0); ++i) {
      if (raw) raw->push_back(x[i]);
      out.push_back(rm.config.reward_gain * x[i] + rm.config.reward_bias);
    }
  }
  return out;
}

}  // namespace rlhf
