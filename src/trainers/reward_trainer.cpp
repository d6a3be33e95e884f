#include "trainers/reward_trainer.h"

#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/io.h"
#include "data/collate.h"
#include "generate/generator.h"
#include "model/reward_model.h"
#include "losses/losses.h"
#include "formats/formats.h"
#include "train/config_fields.h"
#include "trainers/trainer_util.h"

namespace rlhf {

void validate(const RewardConfig& c) {
  validate(c.train);
  check_range(c.norm_samples >= 0, "norm_samples", c.norm_samples, ">= 0 (0: off)");
  check_range(c.norm_max_new_tokens > 0, "norm_max_new_tokens", c.norm_max_new_tokens, "> 0");
  check_range(std::isfinite(c.norm_temperature) && c.norm_temperature > 0, "norm_temperature", c.norm_temperature,
              "a finite number > 0");
}

Metrics train_reward_model(RewardConfig cfg, bool resume, int64_t stop_after) {
  const TrainConfig& tc = cfg.train;
  check(!tc.model.empty(), "rm train: `model` is required");
  check(!tc.train_data.empty(), "rm train: `train_data` is required");
  validate(cfg);
  torch::manual_seed(tc.seed);

  // 1. Backbone from the policy with a fresh scalar head (the LM head is dropped).
  auto files = read_model_files(tc.model);
  check(files.tokenizer != nullptr, tc.model + ": no tokenizer found with the model");
  ModelConfig rm_cfg = files.config;
  rm_cfg.num_labels = 1;
  files.weights.erase("lm_head.weight");
  LoadedModel rm;
  rm.config = rm_cfg;
  rm.model = Transformer(rm_cfg);
  files.weights["score.weight"] = rm.model->weights().at("score.weight").detach().clone();
  rm.model->load_weights(files.weights, tc.model);
  rm.model->to(parse_device(tc.device), parse_dtype(tc.dtype));
  rm.model->set_checkpoint_activations(tc.checkpoint_activations);
  apply_lora(rm.model, tc, {"score"});  // the fresh head trains whole
  rm.tokenizer = std::move(files.tokenizer);
  const Tokenizer& tok = *rm.tokenizer;
  const auto dev = rm.model->device();
  const int32_t pad = training_pad_id(tok);

  // 2. Pairs, tokenized once. No EOS is appended: the reward is read at the last text token,
  // where transformers' sequence classifier reads it too (it skips pad = EOS tokens).
  ReadOptions ro{tc.skip_bad};
  auto read = [&](const std::string& p) { return read_pairs(p, cfg.data_format, ro); };
  auto [train_pairs, eval_pairs] = train_eval_split(tc, read(tc.train_data), read, pair_prompt);
  struct TokPair { TokenizedExample chosen, rejected; double margin, chosen_prob; };
  auto tokenize = [&](const std::vector<PreferencePair>& ps) {
    std::vector<TokPair> out;
    for (const auto& p : ps)
      out.push_back({tokenize_example(tok, p.prompt, p.chosen, tc.max_length, false),
                     tokenize_example(tok, p.prompt, p.rejected, tc.max_length, false), p.margin, p.chosen_prob});
    return out;
  };
  const auto train = tokenize(train_pairs), eval = tokenize(eval_pairs);
  // Units the loop shuffles: single pairs, or all pairs of one prompt.
  std::vector<std::vector<size_t>> units;
  if (cfg.group_by_prompt) {
    std::map<size_t, std::vector<size_t>> by_group;
    for (size_t i = 0; i < train_pairs.size(); ++i) by_group[train_pairs[i].group].push_back(i);
    for (auto& [g, idx] : by_group) units.push_back(idx);
  } else {
    for (size_t i = 0; i < train.size(); ++i) units.push_back({i});
  }
  auto pairs_of = [&](const std::vector<size_t>& unit_idx) {
    std::vector<size_t> out;
    for (size_t u : unit_idx) out.insert(out.end(), units[u].begin(), units[u].end());
    return out;
  };

  // 3. Bradley-Terry on (chosen, rejected) scored in one batch.
  auto pair_losses = [&](const std::vector<TokPair>& set, const std::vector<size_t>& idx) {
    std::vector<TokenizedExample> chosen, rejected;
    std::vector<double> margins, targets;
    bool soft = false;  // any soft label in the batch (else TRL's hard-label loss exactly)
    for (size_t i : idx) chosen.push_back(set[i].chosen), rejected.push_back(set[i].rejected);
    for (size_t i : idx) margins.push_back(set[i].margin), targets.push_back(set[i].chosen_prob), soft |= set[i].chosen_prob != 1.0;
    torch::Tensor r;  // (2n): chosen then rejected
    if (auto shared = cfg.share_prompt ? collate_shared_prompt(chosen, rejected, pad) : std::nullopt)
      r = rm.model->score_head(shared_prompt_hidden(rm.model, *shared, dev).index_select(0, shared->last.to(dev))).squeeze(-1);
    else {
      chosen.insert(chosen.end(), rejected.begin(), rejected.end());
      r = raw_reward_scores(rm.model, chosen, pad);
    }
    const int64_t n = idx.size();
    auto rc = r.narrow(0, 0, n), rr = r.narrow(0, n, n);
    auto margin = torch::tensor(margins, torch::kFloat64).to(torch::kFloat32).to(dev);
    auto target = soft ? torch::tensor(targets, torch::kFloat64).to(torch::kFloat32).to(dev) : torch::Tensor();
    auto loss_sum = reward_loss(rc, rr, margin, target) * double(n);
    const double correct = (rc > rr).sum().item<double>();
    return std::make_tuple(loss_sum, correct, (rc - rr).sum().item<double>());
  };
  TrainHooks hooks;
  hooks.count = [&](const std::vector<size_t>& u) { return double(pairs_of(u).size()); };
  hooks.micro_step = [&](const std::vector<size_t>& u) {
    rm.model->train();
    auto [loss_sum, correct, margin_sum] = pair_losses(train, pairs_of(u));
    return MicroStep{loss_sum, {{"accuracy", correct}, {"margin", margin_sum}}};
  };
  if (!eval.empty())
    hooks.evaluate = [&]() -> Metrics {
      torch::NoGradGuard no_grad;
      rm.model->eval();
      double loss = 0, correct = 0, margin = 0;
      const size_t bs = std::max<int64_t>(1, tc.batch_size / tc.grad_accum_steps);
      for (size_t begin = 0; begin < eval.size(); begin += bs) {
        std::vector<size_t> idx(std::min(bs, eval.size() - begin));
        std::iota(idx.begin(), idx.end(), begin);
        auto [l, c, m] = pair_losses(eval, idx);
        loss += l.item<double>();
        correct += c;
        margin += m;
      }
      const double n = double(eval.size());
      return {{"loss", loss / n}, {"accuracy", correct / n}, {"margin", margin / n}};
    };
  hooks.save_model = [&](const std::filesystem::path& dir) {
    // 4. Normalization: gain and bias so that the reference policy's samples score mean 0,
    // std 1 (as lm-human-preferences normalises its reward model), fitted on prompts of the training data.
    ModelConfig out_cfg = rm.config;
    out_cfg.pad_token_id = pad;  // transformers needs it to find the last token of a row
    if (cfg.norm_samples > 0) {
      auto policy = load_model(tc.model, {tc.device, tc.dtype});
      std::vector<std::vector<int32_t>> prompts;
      std::vector<std::string> prompt_texts;
      for (int64_t i = 0; i < cfg.norm_samples; ++i) {
        const auto& p = train_pairs[i % train_pairs.size()].prompt;
        prompt_texts.push_back(p);
        prompts.push_back(encode_prompt(tok, p));
      }
      GenerateOptions g;
      g.max_new_tokens = cfg.norm_max_new_tokens;
      g.sampling.temperature = static_cast<float>(cfg.norm_temperature);
      g.seed = static_cast<uint64_t>(tc.seed);
      auto samples = generate(policy.model, *policy.tokenizer, prompts, g);
      std::vector<std::pair<std::string, std::string>> texts;
      for (size_t i = 0; i < samples.size(); ++i) texts.emplace_back(prompt_texts[i], samples[i].text);
      rm.config.reward_gain = 1.0;
      rm.config.reward_bias = 0.0;
      auto r = score_texts(rm, texts, tc.max_length);
      const double mean = std::accumulate(r.begin(), r.end(), 0.0) / r.size();
      double var = 0;
      for (double x : r) var += (x - mean) * (x - mean);
      const double sd = std::sqrt(var / r.size());
      out_cfg.reward_gain = 1.0 / std::max(sd, 1e-8);
      out_cfg.reward_bias = -mean * out_cfg.reward_gain;
      rm.config = out_cfg;
    }
    write_trained_model(dir, rm.model, out_cfg, &tok);
  };

  TrainLoop loop(tc, named_trainable(*rm.model), to_toml(cfg), units.size());
  return loop.run(hooks, resume, stop_after);
}

}  // namespace rlhf
