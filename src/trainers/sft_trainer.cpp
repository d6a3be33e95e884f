#include "trainers/sft_trainer.h"

#include <numeric>

#include "core/error.h"
#include "data/collate.h"
#include "data/datasets.h"
#include "losses/losses.h"
#include "formats/formats.h"
#include "model/model.h"
#include "train/config_fields.h"
#include "trainers/trainer_util.h"

namespace rlhf {

Metrics train_sft(SftConfig cfg, bool resume, int64_t stop_after) {
  const TrainConfig& tc = cfg.train;
  check(!tc.model.empty(), "sft: `model` is required");
  check(!tc.train_data.empty(), "sft: `train_data` is required");
  validate(tc);
  torch::manual_seed(tc.seed);

  // 1. Model, tokenizer and data.
  auto lm = load_model(tc.model, {tc.device, tc.dtype});
  check(lm.tokenizer != nullptr, tc.model + ": no tokenizer found with the model");
  lm.model->set_checkpoint_activations(tc.checkpoint_activations);
  apply_lora(lm.model, tc);
  const Tokenizer& tok = *lm.tokenizer;
  const auto device = lm.model->device();
  ReadOptions ro{tc.skip_bad};
  auto read = [&](const std::string& path) { return read_sft(path, ro, cfg.chat_template); };
  auto [train_text, eval_text] = train_eval_split(tc, read(tc.train_data), read);
  auto tokenize_all = [&](const std::vector<SftExample>& xs) {
    std::vector<TokenizedExample> out;
    for (const auto& x : xs) out.push_back(tokenize_example(tok, x.prompt, x.completion, tc.max_length));
    return cfg.packing ? pack_examples(out, tc.max_length) : out;
  };
  const auto train = tokenize_all(train_text), eval = tokenize_all(eval_text);
  const int32_t pad = training_pad_id(tok);

  // 2. The loss of a set of examples, summed over their completion tokens.
  auto batch_of = [&](const std::vector<TokenizedExample>& set, const std::vector<size_t>& idx) {
    std::vector<TokenizedExample> xs;
    for (size_t i : idx) xs.push_back(set[i]);
    return to_device(collate(xs, pad), device);
  };
  // Tokens the loss is taken over: completion tokens that have a predecessor.
  auto targets = [](const TokenBatch& b) { return b.loss_mask.narrow(1, 1, b.loss_mask.size(1) - 1).sum(); };
  auto loss_sum = [&](const TokenBatch& b) {
    auto logits = lm.model->forward(b.input_ids, {}, b.attention_mask);
    return sft_loss(logits, b.input_ids, b.loss_mask) * targets(b);
  };

  TrainHooks hooks;
  // Counted from the token lists (no collation): the t >= 1 with loss_mask[t] = 1.
  hooks.count = [&](const std::vector<size_t>& idx) {
    double n = 0;
    for (size_t i : idx) {
      const auto& x = train[i];
      if (!x.loss_mask.empty()) n += std::accumulate(x.loss_mask.begin() + 1, x.loss_mask.end(), 0.0);
      else n += std::max<int64_t>(0, int64_t(x.ids.size()) - std::max<int64_t>(x.prompt_length, 1));
    }
    return n;
  };
  hooks.micro_step = [&](const std::vector<size_t>& idx) {
    lm.model->train();
    return MicroStep{loss_sum(batch_of(train, idx)), {}};
  };
  if (!eval.empty())
    hooks.evaluate = [&]() -> Metrics {
      torch::NoGradGuard no_grad;
      lm.model->eval();
      double total = 0, tokens = 0;
      const size_t bs = std::max<int64_t>(1, tc.batch_size / tc.grad_accum_steps);
      for (size_t begin = 0; begin < eval.size(); begin += bs) {
        std::vector<size_t> idx;
        for (size_t i = begin; i < std::min(eval.size(), begin + bs); ++i) idx.push_back(i);
        auto b = batch_of(eval, idx);
        total += loss_sum(b).item<double>();
        tokens += targets(b).item<double>();
      }
      return {{"loss", total / tokens}, {"perplexity", std::exp(total / tokens)}};
    };
  hooks.save_model = [&](const std::filesystem::path& dir) { write_trained_model(dir, lm.model, lm.config, &tok); };

  TrainLoop loop(tc, named_trainable(*lm.model), to_toml(cfg), train.size());
  return loop.run(hooks, resume, stop_after);
}

}  // namespace rlhf
