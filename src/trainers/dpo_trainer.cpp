#include "trainers/dpo_trainer.h"

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "data/collate.h"
#include "data/datasets.h"
#include "formats/formats.h"
#include "losses/losses.h"
#include "train/config_fields.h"
#include "trainers/trainer_util.h"

namespace rlhf {

namespace {

struct TokPair {
  TokenizedExample chosen, rejected;
  double ref_chosen = 0, ref_rejected = 0;  // reference logps, filled once
};

}  // namespace

void validate(const DpoConfig& c) {
  validate(c.train);
  check_range(std::isfinite(c.beta) && c.beta > 0, "beta", c.beta, "a finite number > 0");
  check_range(c.label_smoothing >= 0 && c.label_smoothing < 0.5, "label_smoothing", c.label_smoothing, "in [0, 0.5)");
  check(c.loss_type == "sigmoid" || c.loss_type == "ipo", "dpo: loss_type must be sigmoid or ipo, got '" + c.loss_type + "'");
}

Metrics train_dpo(DpoConfig cfg, bool resume, int64_t stop_after) {
  const TrainConfig& tc = cfg.train;
  check(!tc.model.empty(), "dpo: `model` is required");
  check(!tc.train_data.empty(), "dpo: `train_data` is required");
  validate(cfg);
  const auto type = cfg.loss_type == "ipo" ? DpoLossType::IPO : DpoLossType::Sigmoid;
  torch::manual_seed(tc.seed);

  auto lm = load_model(tc.model, {tc.device, tc.dtype});
  check(lm.tokenizer != nullptr, tc.model + ": no tokenizer found with the model");
  lm.model->set_checkpoint_activations(tc.checkpoint_activations);
  apply_lora(lm.model, tc);
  const Tokenizer& tok = *lm.tokenizer;
  const auto dev = lm.model->device();
  const int32_t pad = training_pad_id(tok);

  ReadOptions ro{tc.skip_bad};
  auto read = [&](const std::string& p) { return read_pairs(p, cfg.data_format, ro); };
  auto [train_pairs, eval_pairs] = train_eval_split(tc, read(tc.train_data), read, pair_prompt);
  auto tokenize = [&](const std::vector<PreferencePair>& ps) {
    std::vector<TokPair> out;
    for (const auto& p : ps)
      out.push_back({tokenize_example(tok, p.prompt, p.chosen, tc.max_length),
                     tokenize_example(tok, p.prompt, p.rejected, tc.max_length)});
    return out;
  };
  auto train = tokenize(train_pairs), eval = tokenize(eval_pairs);

  // Summed completion logps of chosen and rejected, (n) each, and the completion lengths
  // (IPO averages per token).
  struct Logps { torch::Tensor chosen, rejected, chosen_len, rejected_len; };
  auto logps = [&](Transformer& model, const std::vector<TokPair>& set, const std::vector<size_t>& idx) {
    const int64_t n = idx.size();
    if (cfg.share_prompt) {  // each prompt once, logits only where a completion token is predicted
      std::vector<TokenizedExample> chosen, rejected;
      for (size_t i : idx) chosen.push_back(set[i].chosen), rejected.push_back(set[i].rejected);
      if (auto b = collate_shared_prompt(chosen, rejected, pad)) {
        auto logits = model->logits(shared_prompt_hidden(model, *b, dev).index_select(0, b->predictor.to(dev)));  // (N, V)
        auto token_lp = logits.gather(1, b->target.to(dev).unsqueeze(1)).squeeze(1) - logits.logsumexp(1);
        const auto seq = b->sequence.to(dev);
        auto lp = torch::zeros({2 * n}, token_lp.options()).index_add(0, seq, token_lp);
        auto len = torch::zeros({2 * n}, token_lp.options()).index_add(0, seq, torch::ones_like(token_lp));
        return Logps{lp.narrow(0, 0, n), lp.narrow(0, n, n), len.narrow(0, 0, n), len.narrow(0, n, n)};
      }
    }
    std::vector<TokenizedExample> xs;
    for (size_t i : idx) xs.push_back(set[i].chosen);
    for (size_t i : idx) xs.push_back(set[i].rejected);
    auto b = to_device(collate(xs, pad), dev);
    auto lp = sequence_logprobs(model->forward(b.input_ids, {}, b.attention_mask), b.input_ids, b.loss_mask);
    auto len = b.loss_mask.sum(1);
    return Logps{lp.narrow(0, 0, n), lp.narrow(0, n, n), len.narrow(0, 0, n), len.narrow(0, n, n)};
  };

  // 1. Reference logps, once, from a frozen copy of the starting (or given) model; with LoRA
  // and no ref_model, from the model itself with its adapters off (no copy).
  {
    const bool base_is_ref = tc.lora_r > 0 && cfg.ref_model.empty();
    LoadedModel copy;
    if (!base_is_ref) {
      copy = load_model(cfg.ref_model.empty() ? tc.model : cfg.ref_model, {tc.device, tc.dtype});
      for (auto& p : copy.model->parameters()) p.set_requires_grad(false);
    }
    Transformer& ref = base_is_ref ? lm.model : copy.model;
    const LoraDisabled base_only;
    torch::NoGradGuard no_grad;
    const size_t bs = std::max<int64_t>(1, tc.batch_size / tc.grad_accum_steps);
    for (auto* set : {&train, &eval})
      for (size_t begin = 0; begin < set->size(); begin += bs) {
        std::vector<size_t> idx(std::min(bs, set->size() - begin));
        std::iota(idx.begin(), idx.end(), begin);
        auto lp = logps(ref, *set, idx);
        for (size_t k = 0; k < idx.size(); ++k) {
          (*set)[idx[k]].ref_chosen = lp.chosen[k].item<double>();
          (*set)[idx[k]].ref_rejected = lp.rejected[k].item<double>();
        }
      }
  }

  // 2. The DPO loss of a set of pairs, summed, with the TRL metrics (sums as well).
  auto dpo = [&](const std::vector<TokPair>& set, const std::vector<size_t>& idx) {
    auto lp = logps(lm.model, set, idx);
    const auto& pc = lp.chosen;
    const auto& pr = lp.rejected;
    std::vector<double> rc, rr;
    for (size_t i : idx) {
      rc.push_back(set[i].ref_chosen);
      rr.push_back(set[i].ref_rejected);
    }
    auto to_t = [&](const std::vector<double>& v) { return torch::tensor(v, torch::kFloat64).to(torch::kFloat32).to(dev); };
    auto out = dpo_loss(pc, pr, to_t(rc), to_t(rr), cfg.beta, cfg.label_smoothing, type, lp.chosen_len, lp.rejected_len);
    Metrics sums{{"rewards/chosen", out.chosen_rewards.sum().item<double>()},
                 {"rewards/rejected", out.rejected_rewards.sum().item<double>()},
                 {"rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).sum().item<double>()},
                 {"rewards/margins", (out.chosen_rewards - out.rejected_rewards).sum().item<double>()},
                 {"logps/chosen", pc.sum().item<double>()},
                 {"logps/rejected", pr.sum().item<double>()}};
    return MicroStep{out.losses.sum(), sums};
  };
  TrainHooks hooks;
  hooks.count = [](const std::vector<size_t>& idx) { return double(idx.size()); };
  hooks.micro_step = [&](const std::vector<size_t>& idx) {
    lm.model->train();
    return dpo(train, idx);
  };
  if (!eval.empty())
    hooks.evaluate = [&]() -> Metrics {
      torch::NoGradGuard no_grad;
      lm.model->eval();
      Metrics total;
      const size_t bs = std::max<int64_t>(1, tc.batch_size / tc.grad_accum_steps);
      for (size_t begin = 0; begin < eval.size(); begin += bs) {
        std::vector<size_t> idx(std::min(bs, eval.size() - begin));
        std::iota(idx.begin(), idx.end(), begin);
        auto r = dpo(eval, idx);
        total["loss"] += r.loss_sum.item<double>();
        for (const auto& [k, v] : r.sums) total[k] += v;
      }
      for (auto& [k, v] : total) v /= double(eval.size());
      return total;
    };
  hooks.save_model = [&](const std::filesystem::path& dir) { write_trained_model(dir, lm.model, lm.config, &tok); };

  TrainLoop loop(tc, named_trainable(*lm.model), to_toml(cfg), train.size());
  return loop.run(hooks, resume, stop_after);
}

}  // namespace rlhf
