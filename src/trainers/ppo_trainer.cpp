#include "trainers/ppo_trainer.h"

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "core/error.h"
#include "data/datasets.h"
#include "dist/process_group.h"
#include "formats/formats.h"
#include "generate/generator.h"
#include "losses/policy_gradient.h"
#include "losses/ppo.h"
#include "model/model.h"
#include "model/reward_model.h"
#include "train/config_fields.h"
#include "train/profile.h"
#include "train/side_by_side.h"
#include "trainers/trainer_util.h"

using json = nlohmann::json;

namespace rlhf {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One rollout, laid out as [left-padded prompt | right-padded response] so that every model
// reads it with the same positions (positions follow the mask), and what scoring found.
struct Rollout {
  torch::Tensor ids;            // (B, P + R) int64
  torch::Tensor mask;           // (B, P + R) int64, 1 = real token
  torch::Tensor response_mask;  // (B, R) float, 1 = generated token
  int64_t P = 0, R = 0;
  torch::Tensor gen_logprobs;   // (B, R) as the generator reported them
  std::vector<int64_t> first;   // (B) column of each row's first prompt token (left padding before it)
  torch::Tensor scores;         // (B) as trained on: the reward's, then the missing-EOS and length penalties
  torch::Tensor raw;            // (B) the reward's scores (CPU)
  torch::Tensor logprobs;       // (B, R) the policy's at the rollout (old log-probs), at the temperature
  torch::Tensor ref_logprobs;   // (B, R) the reference's, at the temperature
  torch::Tensor ref_logprobs_t1;  // (B, R) online_dpo: the reference's at temperature 1, the DPO loss's
  torch::Tensor values;         // (B, R) the value model's V(s_t), 0 without one
  std::vector<double> lengths;  // (B) response tokens, EOS included
};

// Some rows of several rollouts as one: parts (rollout, rows) in order, re-padded to the widest
// prompt and response among them (more padding leaves every log-prob as it was: positions
// follow the mask).
Rollout concat_rows(const std::vector<Rollout>& rollouts, const std::vector<std::pair<size_t, torch::Tensor>>& parts,
                    int32_t pad) {
  using Field = torch::Tensor Rollout::*;
  const Field per_row[] = {&Rollout::scores, &Rollout::raw};  // (B)
  const Field per_token[] = {&Rollout::response_mask, &Rollout::gen_logprobs, &Rollout::logprobs,
                             &Rollout::ref_logprobs,  &Rollout::ref_logprobs_t1, &Rollout::values};  // (B, R), 0-padded
  Rollout out;
  for (const auto& [k, rows] : parts) out.P = std::max(out.P, rollouts[k].P), out.R = std::max(out.R, rollouts[k].R);
  std::vector<torch::Tensor> ids, mask;
  std::vector<std::vector<torch::Tensor>> rows_of(std::size(per_row)), tokens_of(std::size(per_token));
  for (const auto& [k, rows] : parts) {
    const Rollout& r = rollouts[k];
    const int64_t left = out.P - r.P, right = out.R - r.R;
    auto take = [&](const torch::Tensor& t) { return t.index_select(0, rows.to(t.device())); };
    ids.push_back(torch::constant_pad_nd(take(r.ids), {left, right}, pad));
    mask.push_back(torch::constant_pad_nd(take(r.mask), {left, right}, 0));
    for (size_t f = 0; f < std::size(per_row); ++f) rows_of[f].push_back(take(r.*per_row[f]));
    for (size_t f = 0; f < std::size(per_token); ++f)
      if ((r.*per_token[f]).defined()) tokens_of[f].push_back(torch::constant_pad_nd(take(r.*per_token[f]), {0, right}, 0));
    const auto rows_cpu = rows.to(torch::kCPU, torch::kLong).contiguous();
    for (int64_t i = 0; i < rows_cpu.numel(); ++i) {
      const int64_t row = rows_cpu.data_ptr<int64_t>()[i];
      out.first.push_back(r.first[row] + left);
      out.lengths.push_back(r.lengths[row]);
    }
  }
  out.ids = torch::cat(ids), out.mask = torch::cat(mask);
  for (size_t f = 0; f < std::size(per_row); ++f) out.*per_row[f] = torch::cat(rows_of[f]);
  for (size_t f = 0; f < std::size(per_token); ++f)
    if (!tokens_of[f].empty()) out.*per_token[f] = torch::cat(tokens_of[f]);
  return out;
}

// The first n true entries of keep (P) bool, the rest false.
torch::Tensor first_true(const torch::Tensor& keep, int64_t n) { return keep & (keep.to(torch::kLong).cumsum(0) <= n); }

// The ids and mask of some rows without the left-padding columns they all share (a
// minibatch's prompts are often shorter than the rollout's longest, and padding columns
// cost the products as much as tokens do); P: their prompt columns.
struct RowView {
  torch::Tensor ids, mask;
  int64_t P;
};
RowView view_rows(const Rollout& r, const torch::Tensor& rows) {
  const auto rows_cpu = rows.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* row = rows_cpu.data_ptr<int64_t>();
  int64_t lead = std::max<int64_t>(0, r.P - 1);  // keep the column that predicts the first response token
  for (int64_t i = 0; i < rows_cpu.numel(); ++i) lead = std::min(lead, r.first[row[i]]);
  const int64_t width = r.P + r.R - lead;
  return {r.ids.index_select(0, rows).narrow(1, lead, width), r.mask.index_select(0, rows).narrow(1, lead, width), r.P - lead};
}

// Log-probs (B, R) of the response tokens and the logits (B, R, V) that scored them, at the
// sampling temperature (the generator sampled from logits / T, so every log-prob divides too).
std::pair<torch::Tensor, torch::Tensor> response_logprobs(Transformer& m, const Rollout& r, const torch::Tensor& rows,
                                                          double temperature) {
  const auto [ids, mask, P] = view_rows(r, rows);
  // The LM head only where a response token is predicted (not over the prompt).
  auto logits = m->logits(m->hidden_states(ids, positions_from_mask(mask), mask).narrow(1, P - 1, r.R));
  if (temperature != 1.0) logits = logits / temperature;  // at T = 1 no pass over the (B, R, V) logits
  auto targets = ids.narrow(1, P, r.R);
  auto logp = torch::log_softmax(logits, -1).gather(2, targets.unsqueeze(-1)).squeeze(-1);
  return {logp, logits};
}

// The value model: a transformer with a scalar head, and the head's bias (the Transformer's
// score head has none, like transformers' sequence classifiers).
struct ValueModel {
  Transformer net;
  torch::Tensor bias;  // (1) float32, trainable
};

// Values V(s_t) (B, R): the value head at the position before each response token.
torch::Tensor response_values(ValueModel& v, const Rollout& r, const torch::Tensor& rows) {
  const auto [ids, mask, P] = view_rows(r, rows);
  auto hidden = v.net->hidden_states(ids, positions_from_mask(mask), mask).narrow(1, P - 1, r.R);
  return v.net->score_head(hidden).select(2, 0) + v.bias;
}

// A value model: the reward model (head and all), or the policy's backbone with a zero head.
// A reward model's head is read as gain * raw + bias (its normalisation, config.json), and
// PPO's scores are in those units: the fold gain * (w . h) + bias = (gain * w) . h + bias
// makes the first values predict normalised scores, not raw ones.
ValueModel make_value_model(const PpoConfig& cfg, const LoadOptions& lo) {
  const bool from_policy = cfg.value_model == "policy" || cfg.reward_model.empty();
  const std::string path = from_policy ? cfg.train.model : (cfg.value_model.empty() ? cfg.reward_model : cfg.value_model);
  auto files = read_model_files(path);
  ModelConfig c = files.config;
  double bias = 0.0;
  if (from_policy) {
    c.num_labels = 1;
    files.weights.erase("lm_head.weight");
    files.weights["score.weight"] = torch::zeros({1, c.hidden_size});  // zero-initialised
  } else {
    check(c.num_labels == 1 && files.weights.count("score.weight"),
          path + ": the value model must have a scalar head (a reward model), got num_labels = " +
              std::to_string(c.num_labels));
    auto& w = files.weights.at("score.weight");  // (1, C)
    w = (w.to(torch::kFloat32) * c.reward_gain).to(w.scalar_type());
    bias = c.reward_bias;
    c.reward_gain = 1.0;
    c.reward_bias = 0.0;
  }
  ValueModel v{Transformer(c), {}};
  v.net->load_weights(files.weights, "value model");
  v.net->to(parse_device(lo.device), parse_dtype(lo.dtype));
  v.bias = torch::full({1}, bias, torch::TensorOptions().dtype(torch::kFloat32).device(v.net->device()));
  v.bias.set_requires_grad(true);
  return v;
}

}  // namespace

void validate(const PpoConfig& c) {
  validate(c.train);
  auto finite = [](double v) { return std::isfinite(v); };
  check_range(c.rollout_batch > 0, "rollout_batch", c.rollout_batch, "> 0");
  check_range(c.minibatches > 0, "minibatches", c.minibatches, "> 0");
  check_range(c.ppo_epochs > 0, "ppo_epochs", c.ppo_epochs, "> 0");
  check_range(c.max_new_tokens > 0, "max_new_tokens", c.max_new_tokens, "> 0");
  check_range(c.max_prompt_length > 0, "max_prompt_length", c.max_prompt_length, "> 0");
  check_range(finite(c.temperature) && c.temperature > 0, "temperature", c.temperature, "a finite number > 0 (sampling)");
  check_range(finite(c.kl_coef) && c.kl_coef >= 0, "kl_coef", c.kl_coef, "a finite number >= 0");
  check_range(finite(c.kl_target) && c.kl_target > 0, "kl_target", c.kl_target, "a finite number > 0");
  check_range(finite(c.kl_horizon) && c.kl_horizon > 0, "kl_horizon", c.kl_horizon, "a finite number > 0");
  check_range(c.gamma >= 0 && c.gamma <= 1, "gamma", c.gamma, "in [0, 1]");
  check_range(c.lam >= 0 && c.lam <= 1, "lam", c.lam, "in [0, 1]");
  check_range(finite(c.clip_range) && c.clip_range > 0, "clip_range", c.clip_range, "a finite number > 0");
  check_range(finite(c.clip_range_value) && c.clip_range_value > 0, "clip_range_value", c.clip_range_value,
              "a finite number > 0");
  check_range(finite(c.vf_coef) && c.vf_coef >= 0, "vf_coef", c.vf_coef, "a finite number >= 0");
  check_range(finite(c.ent_coef), "ent_coef", c.ent_coef, "a finite number");
  check_range(finite(c.missing_eos_penalty), "missing_eos_penalty", c.missing_eos_penalty, "a finite number");
  check_range(finite(c.length_penalty), "length_penalty", c.length_penalty, "a finite number");
  check(c.kl_estimator == "k1" || c.kl_estimator == "k3", "ppo: kl_estimator must be k1 or k3, got '" + c.kl_estimator + "'");
  check_range(finite(c.logprob_tolerance) && c.logprob_tolerance >= 0, "logprob_tolerance", c.logprob_tolerance,
              "a finite number >= 0");
  // Dropout would make the update's model differ from the rollout's (eval mode) one: the first
  // minibatch's ratio guard would fail.
  check(c.train.lora_dropout == 0, "ppo: lora_dropout must be 0 (the rollout and the update must see the same model)");
  check(c.old_logprobs == "recompute" || c.old_logprobs == "generator",
        "ppo: old_logprobs must be recompute or generator, got '" + c.old_logprobs + "'");
  // The generator samples in float32; a bf16 update's first ratio would be off by bf16 rounding.
  const auto& a = c.algorithm;
  check(a == "ppo" || a == "grpo" || a == "rloo" || a == "reinforce++" || a == "online_dpo" || a == "best_of_n",
        "ppo: algorithm must be ppo, grpo, rloo, reinforce++, online_dpo or best_of_n, got '" + a + "'");
  check_range(c.group_size >= 1, "group_size", c.group_size, ">= 1");
  check_range(a == "ppo" || a == "reinforce++" || c.group_size >= 2, "group_size", c.group_size,
              ">= 2 for " + a +
                  (a == "online_dpo"  ? " (a pair of the prompt's samples)"
                   : a == "best_of_n" ? " (the best of the prompt's samples)"
                                      : " (its baseline is the other samples of the prompt)"));
  check(c.rollout_batch % c.group_size == 0, "ppo: rollout_batch (" + std::to_string(c.rollout_batch) +
                                                 ") must be a multiple of group_size (" + std::to_string(c.group_size) + ")");
  check(c.scale_rewards == "group" || c.scale_rewards == "batch" || c.scale_rewards == "none",
        "ppo: scale_rewards must be group, batch or none, got '" + c.scale_rewards + "'");
  check(c.loss_type == "dapo" || c.loss_type == "grpo" || c.loss_type == "bnpo" || c.loss_type == "dr_grpo",
        "ppo: loss_type must be dapo, grpo, bnpo or dr_grpo, got '" + c.loss_type + "'");
  check_range(std::isfinite(c.clip_range_high) && c.clip_range_high >= 0, "clip_range_high", c.clip_range_high,
              "a finite number >= 0 (0: clip_range)");
  check(!c.dynamic_sampling || a == "grpo" || a == "rloo",
        "ppo: dynamic_sampling is for grpo and rloo (whose zero-signal groups have advantage 0), not " + a);
  check_range(c.max_sampling_rounds >= 1, "max_sampling_rounds", c.max_sampling_rounds, ">= 1");
  check_range(finite(c.dpo_beta) && c.dpo_beta > 0, "dpo_beta", c.dpo_beta, "a finite number > 0");
  check(c.dpo_loss == "sigmoid" || c.dpo_loss == "ipo", "ppo: dpo_loss must be sigmoid or ipo, got '" + c.dpo_loss + "'");
  check_range(!std::isnan(c.best_of_n_min_score), "best_of_n_min_score", c.best_of_n_min_score, "a number (-inf: none)");
  check(c.frozen_weights == "f32" || c.frozen_weights == "bf16" || c.frozen_weights == "q8_0",
        "ppo: frozen_weights must be f32, bf16 or q8_0, got '" + c.frozen_weights + "'");
  check(c.frozen_weights != "q8_0" || parse_device(c.train.device).is_cpu(),
        "ppo: frozen_weights = \"q8_0\" runs on the CPU only (device = " + c.train.device + ")");
  check(c.old_logprobs == "recompute" || c.train.precision == "float32",
        "ppo: old_logprobs = \"generator\" needs precision = \"float32\" (the sampler's log-probs are float32)");
}

Metrics train_ppo(PpoConfig cfg, bool resume, const RewardFn& reward_in, int64_t stop_after,
                  const RolloutMetricsFn& rollout_metrics_in, const PpoProbes& probes) {
  const TrainConfig& tc = cfg.train;
  check(!tc.model.empty(), "ppo: `model` (the policy) is required");
  check(!tc.train_data.empty(), "ppo: `train_data` (prompts JSONL) is required");
  if (!reward_in)
    check_reward_spec(cfg.reward, tc.train_data, {.reward_model = cfg.reward_model, .skip_bad = tc.skip_bad});
  validate(cfg);
  // The update's units: every sample, or for online_dpo and best_of_n one per prompt (its pair,
  // its best sample), rollout_batch / group_size of them.
  const bool per_prompt = cfg.algorithm == "online_dpo" || cfg.algorithm == "best_of_n";
  const int64_t units = per_prompt ? cfg.rollout_batch / cfg.group_size : cfg.rollout_batch;
  const std::string units_text = per_prompt ? "rollout_batch / group_size" : "rollout_batch";
  check(units % cfg.minibatches == 0, "ppo: " + units_text + " (" + std::to_string(units) +
                                          ") must be a multiple of minibatches (" + std::to_string(cfg.minibatches) + ")");
  const int64_t mb_size = units / cfg.minibatches;
  check(mb_size % tc.grad_accum_steps == 0, "ppo: the minibatch size must be a multiple of grad_accum_steps");
  // Data-parallel (dist/process_group.h): each rank generates and scores its contiguous share of
  // the rollout, the shares are gathered so that every rank holds the whole rollout (and whitens
  // and shuffles it as one process would), and each rank trains on its share of every
  // micro-batch, with losses normalized by the whole micro-batch's token count and gradients
  // summed over ranks: one process's update on the same rollout.
  ProcessGroup& group = default_process_group();
  const int64_t world = group.world(), micro = mb_size / tc.grad_accum_steps;
  check(micro % world == 0, "ppo: the micro-batch (" + units_text + " / minibatches / grad_accum_steps = " +
                                std::to_string(micro) + ") must be a multiple of the number of ranks (" +
                                std::to_string(world) + ")");
  const int64_t share = cfg.rollout_batch / world, first_row = group.rank() * share;
  const auto estimator = cfg.kl_estimator == "k3" ? KlEstimator::K3 : KlEstimator::K1;
  const auto aggregation = cfg.loss_type == "grpo"      ? PgAggregation::Grpo
                           : cfg.loss_type == "bnpo"    ? PgAggregation::Bnpo
                           : cfg.loss_type == "dr_grpo" ? PgAggregation::DrGrpo
                                                        : PgAggregation::Dapo;
  torch::manual_seed(tc.seed);
  const LoadOptions lo{tc.device, tc.dtype};

  // 1. Policy, frozen reference (eval mode, no gradients), value model, reward. With LoRA the
  // reference is the policy itself with its adapters off (LoraDisabled): no second copy.
  auto policy = load_model(tc.model, lo);
  check(policy.tokenizer != nullptr, tc.model + ": no tokenizer found with the model");
  const Tokenizer& tok = *policy.tokenizer;
  apply_lora(policy.model, tc);
  // The frozen models, packed for inference when asked (kernels/packed_linear.h): a packed
  // model cannot train (its forward refuses autograd), so it is frozen by construction.
  LoadOptions frozen = lo;
  if (cfg.frozen_weights != "f32") {
    if (parse_device(lo.device).is_cpu()) frozen.weights = cfg.frozen_weights;
    else frozen.dtype = "bfloat16";
  }
  auto ref = tc.lora_r > 0 ? LoadedModel{policy.config, policy.model, nullptr} : load_model(tc.model, frozen);
  ref.model->eval();
  if (tc.lora_r == 0)
    for (auto& p : ref.model->parameters()) p.set_requires_grad(false);
  // The base weights (adapters aside).
  const uint64_t ref_fingerprint = ref.model->is_packed() ? 0 : weights_fingerprint(*ref.model);
  // A value model (critic) for PPO only; the other algorithms' baselines come from the samples.
  const bool critic = cfg.algorithm == "ppo";
  ValueModel value = critic ? make_value_model(cfg, lo) : ValueModel{Transformer(nullptr), {}};
  if (critic) apply_lora(value.net, tc, {"score"});
  policy.model->set_checkpoint_activations(tc.checkpoint_activations);
  if (critic) value.net->set_checkpoint_activations(tc.checkpoint_activations);
  const auto dev = policy.model->device();
  RewardFn reward = reward_in;
  RolloutMetricsFn rollout_metrics = rollout_metrics_in;
  if (!reward) {
    Reward built = make_reward(
        cfg.reward, tc.train_data,
        {.reward_model = cfg.reward_model, .load = frozen, .max_length = tc.max_length, .skip_bad = tc.skip_bad});
    reward = [built](const auto& p, const auto& r, const auto& t) mutable { return built.scores(p, r, t); };
    // Each term's mean over this rank's rows of the call just made (the reward runs first).
    if (!built.model_only())
      rollout_metrics = [built, outer = rollout_metrics_in](const auto& p, const auto& r) {
        Metrics m = outer ? outer(p, r) : Metrics{};
        for (const auto& [term, mean] : built.last_means()) m["reward/" + term] = mean;
        return m;
      };
  }
  const auto prompts = read_prompts(tc.train_data, {tc.skip_bad});

  // 2. One optimizer over policy and value parameters; the KL controller.
  AdamW::NamedParams params;
  for (auto& [n, p] : named_trainable(*policy.model)) params.emplace_back("policy." + n, p);
  if (critic) {
    for (auto& [n, p] : named_trainable(*value.net)) params.emplace_back("value." + n, p);
    params.emplace_back("value.score.bias", value.bias);
  }
  AdamW opt(params, {tc.adam_beta1, tc.adam_beta2, tc.adam_eps, tc.weight_decay, tc.adam_tf_epsilon});
  std::unique_ptr<KlController> kl_ctl;
  if (cfg.adaptive_kl) kl_ctl = std::make_unique<AdaptiveKlController>(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon);
  else kl_ctl = std::make_unique<FixedKlController>(cfg.kl_coef);

  // The run directory: config, metrics, crash-safe checkpoints (train/run_dir.h). The
  // checkpoint holds both models' weights, the optimizer and the KL controller's coefficient;
  // rollouts are seeded per iteration, so a resumed run continues exactly.
  const int64_t iterations = tc.max_steps > 0 ? tc.max_steps : 1;
  const int64_t total_updates = iterations * cfg.ppo_epochs * cfg.minibatches;
  RunDir run(tc.run_dir, to_toml(cfg));
  int64_t start = 0;
  if (group.is_main()) {
    if (auto ck = run.start(resume, iterations)) {
      run.restore(*ck, params, opt);
      check(ck->extra.contains("kl_coef") && ck->extra["kl_coef"].is_number(),
            (run.path() / "checkpoint" / "state.json").string() + ": no kl_coef (not a PPO checkpoint)");
      kl_ctl->load_value(ck->extra["kl_coef"].get<double>());
      start = ck->step;
    }
  }
  if (world > 1) {  // every rank starts from rank 0's weights, moments, iteration and KL coefficient
    const auto s0 = sync_from_main(group, params, opt, {double(start), kl_ctl->value()});
    start = static_cast<int64_t>(s0[0]);
    kl_ctl->load_value(s0[1]);
  }
  auto save_checkpoint = [&](int64_t it) {
    if (group.is_main()) run.save(it, params, opt, json{{"kl_coef", kl_ctl->value()}});
  };
  std::vector<torch::Tensor> trainable;
  for (const auto& [name, p] : params) trainable.push_back(p);
  GradientReducer reducer(group, trainable, dist_bucket_bytes(tc));
  ProgressLine progress(tc.progress && group.is_main(), iterations, start);

  // 3-5. One round of rollout rows, on every rank in the end. Prompts: rollout_batch /
  // group_size of them drawn with `prompt_rng` (the same on every rank), group_size samples each,
  // sampled with the fast generator from `gen_seed`. This rank generates and scores rows
  // [first_row, first_row + share); sequence i samples from its own stream (generator.h), so the
  // rows come out the same whichever rank, and however many ranks, generate them. `extra`, when
  // given, gets the rollout metrics (rollout_metrics) of the round.
  const bool dpo_at_t1 = cfg.algorithm == "online_dpo" && cfg.temperature != 1.0;
  const int32_t pad = training_pad_id(tok);
  auto sample_round = [&](std::mt19937_64& prompt_rng, uint64_t gen_seed, Metrics& m, Metrics* extra) {
    auto t0 = Clock::now();
    std::vector<std::string> prompt_texts;
    std::vector<std::vector<int32_t>> prompt_ids;
    Rollout r;
    const std::string* p_text = nullptr;
    for (int64_t i = 0; i < cfg.rollout_batch; ++i) {
      if (i % cfg.group_size == 0) p_text = &prompts[prompt_rng() % prompts.size()];  // a group: G samples of one prompt
      const auto& p = *p_text;
      auto ids = encode_prompt(tok, p);
      if (static_cast<int64_t>(ids.size()) > cfg.max_prompt_length)
        ids.erase(ids.begin(), ids.end() - cfg.max_prompt_length);
      r.P = std::max<int64_t>(r.P, ids.size());  // over the whole rollout: every rank lays it out alike
      if (i < first_row || i >= first_row + share) continue;
      prompt_texts.push_back(p);
      prompt_ids.push_back(ids);
    }
    policy.model->eval();
    GenerateOptions g;
    g.max_new_tokens = cfg.max_new_tokens;
    g.sampling.temperature = static_cast<float>(cfg.temperature);
    g.seed = gen_seed;
    g.first_sequence = static_cast<uint64_t>(first_row);
    if (!cfg.stop_string.empty()) g.stop_strings = {cfg.stop_string};
    auto gens = generate(policy.model, tok, prompt_ids, g);
    m["time/generation_s"] += seconds_since(t0);

    // Lay this rank's rows out as tensors, as wide as the whole rollout's.
    for (const auto& gn : gens) r.R = std::max<int64_t>(r.R, gn.tokens.size());
    r.R = static_cast<int64_t>(group.allreduce_max(std::vector<double>{std::max<double>(double(r.R), 1.0)})[0]);
    const int64_t B = share;  // rows on this rank; cfg.rollout_batch in all
    r.ids = torch::full({B, r.P + r.R}, pad, torch::kLong);
    r.mask = torch::zeros({B, r.P + r.R}, torch::kLong);
    r.response_mask = torch::zeros({B, r.R});
    r.gen_logprobs = torch::zeros({B, r.R});
    std::vector<std::string> responses;
    std::vector<std::vector<int32_t>> response_tokens;
    std::vector<uint8_t> ended;  // EOS or the stop string: no missing-EOS penalty
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = prompt_ids[b];
      const auto& gn = gens[b];
      r.first.push_back(r.P - static_cast<int64_t>(p.size()));
      for (size_t i = 0; i < p.size(); ++i) r.ids[b][r.P - p.size() + i] = p[i];
      r.mask[b].narrow(0, r.P - p.size(), p.size()).fill_(1);
      for (size_t i = 0; i < gn.tokens.size(); ++i) {
        r.ids[b][r.P + i] = gn.tokens[i];
        r.mask[b][r.P + i] = 1;
        r.response_mask[b][i] = 1;
        r.gen_logprobs[b][i] = gn.logprobs[i];
      }
      // The generator's text stops before the stop string; the response, as its tokens, ends after it.
      responses.push_back(gn.finish_reason == "stop" ? gn.text + cfg.stop_string : gn.text);
      response_tokens.push_back(gn.tokens);
      ended.push_back(gn.finish_reason == "eos" || gn.finish_reason == "stop");
      r.lengths.push_back(double(gn.tokens.size()));
    }
    if (probes.after_generation) probes.after_generation(r.gen_logprobs);
    r.ids = r.ids.to(dev);
    r.mask = r.mask.to(dev);
    r.response_mask = r.response_mask.to(dev);

    // 4. Score: the reward on the texts (on this thread, side by side with the value model's
    // forward, train/side_by_side.h); the policy's old and the reference's log-probs side by
    // side; responses that never ended get the missing-EOS penalty, and each pays length_penalty per token.
    t0 = Clock::now();
    torch::Tensor guard_logp;
    const bool from_generator = cfg.old_logprobs == "generator";
    std::vector<double> raw_scores;
    const auto all_rows = torch::arange(B, torch::TensorOptions().dtype(torch::kLong).device(dev));
    {
      torch::NoGradGuard ng;
      // The old log-probs and values under the update's precision (training_autocast), so the
      // first update's ratio starts at 1.
      auto values_part = [&] {
        if (!critic) {
          r.values = torch::zeros({B, r.R}, torch::TensorOptions().device(dev));
          return;
        }
        const auto autocast = training_autocast(tc);
        r.values = response_values(value, r, all_rows);
      };
      auto reward_part = [&] { raw_scores = reward(prompt_texts, responses, response_tokens); };
      auto logprobs_part = [&] {
        if (from_generator) return;
        {
          const auto autocast = training_autocast(tc);
          r.logprobs = response_logprobs(policy.model, r, all_rows, cfg.temperature).first;
        }
        // The generator samples in float32; under bf16 the guard below compares it with a float32
        // forward (bf16 rounding alone moves log-probs by 0.1 and more, far above the tolerance).
        guard_logp = tc.precision == "bf16" ? response_logprobs(policy.model, r, all_rows, cfg.temperature).first : r.logprobs;
      };
      auto ref_part = [&] {
        // Packed matrices compute in float32 on their own kernels (no autocast).
        const auto autocast = ref.model->is_packed() ? Autocast(dev, false) : training_autocast(tc);
        const LoraDisabled base_only;  // with LoRA, the reference is the policy's base
        r.ref_logprobs = response_logprobs(ref.model, r, all_rows, cfg.temperature).first;
        if (dpo_at_t1) r.ref_logprobs_t1 = response_logprobs(ref.model, r, all_rows, 1.0).first;
      };
      if (dev.is_cpu()) {
        side_by_side(values_part, reward_part);
        if (from_generator) ref_part();
        else side_by_side(logprobs_part, ref_part);
      } else {
        reward_part(), logprobs_part(), ref_part(), values_part();
      }
    }
    check(raw_scores.size() == static_cast<size_t>(B), "ppo: the reward gave " + std::to_string(raw_scores.size()) +
                                                           " scores for " + std::to_string(B) + " responses");
    r.raw = torch::tensor(raw_scores, torch::kFloat64).to(torch::kFloat32);  // (B)
    if (extra && rollout_metrics) *extra = rollout_metrics(prompt_texts, responses);
    r.scores = r.raw;
    if (cfg.penalize_missing_eos)
      r.scores = missing_eos_penalty(r.scores, torch::tensor(std::vector<int64_t>(ended.begin(), ended.end())).to(torch::kBool),
                                     cfg.missing_eos_penalty);
    if (cfg.length_penalty != 0.0)
      r.scores = r.scores - cfg.length_penalty * torch::tensor(r.lengths, torch::kFloat64).to(torch::kFloat32);
    r.scores = r.scores.to(dev);

    if (from_generator) {
      r.logprobs = r.gen_logprobs.to(dev);  // 0 outside the responses, as every use masks them
    } else {
      const double gap =
          ((guard_logp.to(torch::kCPU) - r.gen_logprobs) * r.response_mask.to(torch::kCPU)).abs().max().item<double>();
      check(gap <= cfg.logprob_tolerance,
            "ppo: the generator's and the trainer's log-probabilities differ by " + std::to_string(gap) +
                " (tolerance " + std::to_string(cfg.logprob_tolerance) + "): the two forward passes disagree");
    }
    if (world > 1) {
      // 5. Every rank gets the whole rollout (rows in global order), so what follows (rewards,
      // GAE, whitening over the global batch, the minibatch order) is one process's computation.
      auto whole = [&](const torch::Tensor& t, torch::Dtype dtype) {
        auto sizes = t.sizes().vec();
        sizes[0] = cfg.rollout_batch;
        auto out = torch::zeros(sizes, dtype);
        out.narrow(0, first_row, B).copy_(t.to(torch::kCPU, dtype));
        return out;
      };
      std::vector<torch::Tensor> f32{whole(r.response_mask, torch::kFloat32), whole(r.gen_logprobs, torch::kFloat32),
                                     whole(r.logprobs, torch::kFloat32),      whole(r.ref_logprobs, torch::kFloat32),
                                     whole(r.values, torch::kFloat32),        whole(r.scores, torch::kFloat32),
                                     whole(r.raw, torch::kFloat32)};
      if (dpo_at_t1) f32.push_back(whole(r.ref_logprobs_t1, torch::kFloat32));
      // Token ids and counts travel as float64, exact below 2^53.
      std::vector<torch::Tensor> f64{whole(r.ids, torch::kFloat64), whole(r.mask, torch::kFloat64),
                                     whole(torch::tensor(r.first, torch::kLong), torch::kFloat64),
                                     whole(torch::tensor(r.lengths, torch::kFloat64), torch::kFloat64)};
      group.allreduce_sum(f32);
      group.allreduce_sum(f64);
      r.response_mask = f32[0].to(dev);
      r.gen_logprobs = f32[1];
      r.logprobs = f32[2].to(dev);
      r.ref_logprobs = f32[3].to(dev);
      r.values = f32[4].to(dev);
      r.scores = f32[5].to(dev);
      r.raw = f32[6];
      if (dpo_at_t1) r.ref_logprobs_t1 = f32[7].to(dev);
      r.ids = f64[0].to(torch::kLong).to(dev);
      r.mask = f64[1].to(torch::kLong).to(dev);
      const auto first = f64[2].to(torch::kLong);
      r.first.assign(first.data_ptr<int64_t>(), first.data_ptr<int64_t>() + first.numel());
      r.lengths.assign(f64[3].data_ptr<double>(), f64[3].data_ptr<double>() + f64[3].numel());
      if (extra) {  // rollout metrics are means over this rank's rows: weighted by its share, then summed
        std::vector<double> v;
        for (const auto& [k, x] : *extra) v.push_back(x * double(B) / double(cfg.rollout_batch));
        v = group.allreduce_sum(v);
        size_t i = 0;
        for (auto& [k, x] : *extra) x = v[i++];
      }
    }
    if (cfg.algorithm == "online_dpo" && !dpo_at_t1) r.ref_logprobs_t1 = r.ref_logprobs;
    m["time/scoring_s"] += seconds_since(t0);
    return r;
  };

  Metrics last;
  for (int64_t it = start; it < iterations; ++it) {
    Metrics m{{"step", double(it + 1)}, {"kl_coef", kl_ctl->value()}};
    const StepProfiler profile(it + 1);  // RLHF_PROFILE=N (train/profile.h)
    // 3-5. This iteration's rollout, from seeds of the iteration, so a resumed run continues exactly.
    const uint64_t prompt_seed = static_cast<uint64_t>(tc.seed) * 1000003ull + static_cast<uint64_t>(it);
    const uint64_t gen_seed = static_cast<uint64_t>(tc.seed) + 7919ull * static_cast<uint64_t>(it);
    std::mt19937_64 rng(prompt_seed);  // then shuffles the minibatches
    Metrics extra;
    std::vector<Rollout> rounds;
    rounds.push_back(sample_round(rng, gen_seed, m, &extra));
    const int64_t G = cfg.group_size;
    if (cfg.dynamic_sampling) {
      // DAPO's dynamic sampling: groups with a signal (scores not all alike) from each round in
      // turn, further rounds of fresh prompts (seeds of their own) while too few, then zero-signal
      // groups from the first round on if the rounds ran out. Decided on the gathered rounds, so
      // every rank picks the same rows.
      const int64_t groups = cfg.rollout_batch / G;
      std::vector<std::pair<size_t, torch::Tensor>> parts;
      int64_t have = 0;
      for (size_t k = 0;; ++k) {
        const auto signal = first_true(groups_with_signal(rounds[k].scores.cpu(), G), groups - have);
        have += signal.sum().item<int64_t>();
        parts.emplace_back(k, group_rows(signal, G));
        if (have == groups || int64_t(k) + 1 == cfg.max_sampling_rounds) break;
        std::mt19937_64 round_rng(prompt_seed ^ (0x9E3779B97F4A7C15ull * (k + 1)));
        rounds.push_back(sample_round(round_rng, gen_seed + 1000000007ull * (k + 1), m, nullptr));
      }
      for (size_t k = 0; k < rounds.size() && have < groups; ++k) {
        const auto none = first_true(~groups_with_signal(rounds[k].scores.cpu(), G), groups - have);
        have += none.sum().item<int64_t>();
        parts.emplace_back(k, group_rows(none, G));
      }
      m["objective/sampling_rounds"] = double(rounds.size());
      rounds = {concat_rows(rounds, parts, pad)};
    }
    Rollout& r = rounds[0];
    auto& old_logp = r.logprobs;
    const auto& ref_logp = r.ref_logprobs;
    const auto& old_values = r.values;
    const auto& scores = r.scores;
    m["response_length"] = std::accumulate(r.lengths.begin(), r.lengths.end(), 0.0) / double(cfg.rollout_batch);
    m["objective/scores_before_penalties"] = r.raw.mean().item<double>();
    for (const auto& [k, v] : extra) m[k] = v;
    // The scores PPO trains on, as TRL logs them (after its missing_eos_penalty).
    m["objective/scores"] = scores.mean().item<double>();
    if (cfg.algorithm == "grpo" || cfg.algorithm == "rloo")  // 1 - TRL's frac_reward_zero_std
      m["objective/groups_with_signal"] = groups_with_signal(scores.cpu(), G).to(torch::kFloat32).mean().item<double>();

    // 6. Rewards with the per-token KL penalty, GAE, whitened advantages (mean shifted); for
    // online_dpo and best_of_n, the update's units instead: per prompt, its pair or its best sample.
    auto shaped = per_token_rewards(old_logp, ref_logp, scores, r.response_mask, kl_ctl->value(), estimator);
    auto rewards = cfg.whiten_rewards ? masked_whiten(shaped.rewards, r.response_mask, /*shift_mean=*/false) : shaped.rewards;
    auto adv = gae(rewards, old_values, r.response_mask, cfg.gamma, cfg.lam);
    // Per-token advantages (B, R) for ppo, grpo and reinforce++; per-sequence (B) for rloo.
    torch::Tensor advantages;
    // The rows of each unit (U, 1), or (U, 2) chosen and rejected rows for online_dpo; weight (U)
    // 0 for a padding unit (a prompt without a pair or whose best scored below best_of_n_min_score).
    torch::Tensor unit_rows = torch::arange(cfg.rollout_batch, torch::kLong).unsqueeze(1);
    torch::Tensor unit_weight = torch::ones({cfg.rollout_batch});
    auto padded = [&](const torch::Tensor& idx) {  // (K) -> (U), 0-padded
      return torch::cat({idx, torch::zeros({units - idx.size(0)}, torch::kLong)});
    };
    auto weights = [&](int64_t K) { return torch::cat({torch::ones({K}), torch::zeros({units - K})}); };
    if (cfg.algorithm == "ppo") {
      advantages = masked_whiten(adv.advantages, r.response_mask);
    } else if (cfg.algorithm == "grpo") {
      const auto scaling = cfg.scale_rewards == "group"   ? RewardScaling::Group
                           : cfg.scale_rewards == "batch" ? RewardScaling::Batch
                                                          : RewardScaling::None;
      advantages = grpo_advantages(scores, G, scaling).unsqueeze(1).expand({-1, r.R}).contiguous();
    } else if (cfg.algorithm == "rloo") {
      advantages = rloo_advantages(kl_penalized_scores(scores, old_logp, ref_logp, r.response_mask, kl_ctl->value(), estimator),
                                   G, cfg.normalize_advantages);
    } else if (cfg.algorithm == "reinforce++") {
      advantages = reinforce_pp_advantages(old_logp, ref_logp, scores, r.response_mask, kl_ctl->value(), cfg.gamma, estimator)
                       .advantages;
    } else if (cfg.algorithm == "online_dpo") {
      // The missing-EOS and length penalties are in the scores already, as TRL pairs after its penalty.
      const auto pairs = preference_pairs(scores.cpu(), G);
      const int64_t K = pairs.chosen.size(0);
      unit_rows = torch::stack({padded(pairs.chosen), padded(pairs.rejected)}, 1);
      unit_weight = weights(K);
      if (K > 0) {
        const auto s = scores.cpu();
        m["objective/scores_margin"] =
            (s.index_select(0, pairs.chosen) - s.index_select(0, pairs.rejected)).mean().item<double>();
      }
    } else {  // best_of_n
      const auto min_score = std::isfinite(cfg.best_of_n_min_score) ? std::optional(cfg.best_of_n_min_score) : std::nullopt;
      const auto kept = best_of_n(scores.cpu(), G, min_score);
      const int64_t K = kept.size(0);
      unit_rows = padded(kept).unsqueeze(1);
      unit_weight = weights(K);
      m["objective/kept_fraction"] = double(K) / double(units);
      if (K > 0) m["objective/best_score"] = scores.cpu().index_select(0, kept).mean().item<double>();
    }
    if (advantages.defined()) m["objective/advantage_std"] = advantages.std().item<double>();
    const double kl = shaped.kl.sum(1).mean().item<double>();
    m["objective/kl"] = kl;
    m["objective/rlhf_reward"] = m["objective/scores"] - kl_ctl->value() * kl;
    // TRL's objective/entropy: the rollout's estimate of each response's entropy, the sum of
    // -log pi over its sampled tokens, averaged over the batch (nats per response; the mean
    // per-token entropy of the full distributions is policy/entropy_avg, as TRL names it).
    m["objective/entropy"] = torch::where(r.response_mask != 0, -old_logp, 0.0).sum(1).mean().item<double>();
    if (probes.on_rollout)
      probes.on_rollout({r.ids, r.mask, r.response_mask, r.P, r.R, scores, old_logp, ref_logp, old_values, shaped.rewards,
                         adv.returns});
    if (probes.before_update) probes.before_update(old_logp);

    // 7. PPO epochs over minibatches of units reshuffled each epoch, gradient accumulation on top.
    auto t0 = Clock::now();
    policy.model->train();
    if (critic) value.net->train();
    // The rows of some units, (n) unit indices -> (n * k) rows: for pairs, every chosen row, then every rejected one.
    auto rows_of = [&](std::vector<int64_t>::const_iterator begin, std::vector<int64_t>::const_iterator end) {
      const auto u = torch::tensor(std::vector<int64_t>(begin, end), torch::kLong);
      return unit_rows.index_select(0, u).t().reshape(-1).to(dev);
    };
    const auto unit_lengths = torch::tensor(r.lengths, torch::kFloat64).to(torch::kFloat32).index_select(0, unit_rows.select(1, 0));
    const auto dpo_type = cfg.dpo_loss == "ipo" ? DpoLossType::IPO : DpoLossType::Sigmoid;
    Metrics sums;
    int64_t n_mb = 0;
    for (int64_t epoch = 0; epoch < cfg.ppo_epochs; ++epoch) {
      std::vector<int64_t> order(units);
      std::iota(order.begin(), order.end(), 0);
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
      for (int64_t mb = 0; mb < cfg.minibatches; ++mb) {
        opt.zero_grad();
        const auto mb_begin = order.begin() + mb * mb_size;
        // grpo and rloo: the whole minibatch's normaliser (tokens, sequences or micro-batches, as
        // the aggregation counts them), over every micro-batch and rank. online_dpo: its pairs;
        // best_of_n: its kept samples' tokens (the SFT loss is a token mean).
        std::optional<double> pg_normalizer;
        if (per_prompt) {
          const auto u = torch::tensor(std::vector<int64_t>(mb_begin, mb_begin + mb_size), torch::kLong);
          const auto w = unit_weight.index_select(0, u);
          pg_normalizer = std::max(1.0, (cfg.algorithm == "online_dpo" ? w : w * unit_lengths.index_select(0, u)).sum().item<double>());
        } else if (cfg.algorithm == "rloo" || aggregation == PgAggregation::Grpo || aggregation == PgAggregation::DrGrpo) {
          pg_normalizer = double(mb_size);
        } else if (aggregation == PgAggregation::Bnpo) {
          pg_normalizer = double(tc.grad_accum_steps * world);
        } else {
          pg_normalizer = r.response_mask.index_select(0, rows_of(mb_begin, mb_begin + mb_size)).sum().item<double>();
        }
        for (int64_t k = 0; k < tc.grad_accum_steps; ++k) {
          // This rank's share of the micro-batch; its losses (token means) are weighted by its
          // share of the micro-batch's tokens, so the sum over ranks is the whole micro-batch's.
          const auto begin = mb_begin + k * micro;
          const auto mine = begin + group.rank() * (micro / world), mine_end = mine + micro / world;
          const auto rows = rows_of(mine, mine_end);
          const auto unit_w = unit_weight.index_select(0, torch::tensor(std::vector<int64_t>(mine, mine_end), torch::kLong)).to(dev);
          auto mask = r.response_mask.index_select(0, rows);
          double weight = 1.0;
          if (world > 1) weight = mask.sum().item<double>() / r.response_mask.index_select(0, rows_of(begin, begin + micro)).sum().item<double>();
          const bool first_step = epoch == 0 && mb == 0 && k == 0;
          // The policy's and the value model's losses share nothing (separate models, one
          // optimizer): their forwards and backwards run side by side on the CPU, each
          // backward giving exactly its part of the gradient of
          // pg_loss + vf_coef * vf_loss - ent_coef * entropy.
          ValueLossOutput vl;
          torch::Tensor entropy, pg_loss, clipfrac, log_ratio;
          Metrics figures;  // online_dpo's: sums over this rank's pairs / the minibatch's pairs
          const double scale = weight / double(tc.grad_accum_steps);
          auto policy_part = [&] {
            torch::Tensor logp, logits;
            // online_dpo and best_of_n score the samples by the policy's own likelihood, at
            // temperature 1 (TRL's OnlineDPOTrainer does so whatever it sampled at).
            const double temperature = per_prompt ? 1.0 : cfg.temperature;
            {
              const auto autocast = training_autocast(tc);  // the forward pass only
              std::tie(logp, logits) = response_logprobs(policy.model, r, rows, temperature);
            }
            const auto old = old_logp.index_select(0, rows);
            if (cfg.ent_coef != 0) {
              entropy = entropy_from_logits(logits, mask);
            } else {  // logged only: without a graph, whose backward over the (B, R, V) logits would add zeros
              torch::NoGradGuard no_grad;
              entropy = entropy_from_logits(logits.detach(), mask);
            }
            if (!per_prompt || first_step) {
              // The ratio guard's log-probs are at the sampling temperature, as the old ones.
              auto at_t = logp.detach();
              if (temperature != cfg.temperature) {
                const auto targets = r.ids.index_select(0, rows).narrow(1, r.P, r.R).unsqueeze(-1);
                at_t = torch::log_softmax(logits.detach().to(torch::kFloat32) / cfg.temperature, -1).gather(2, targets).squeeze(-1);
              }
              log_ratio = torch::where(mask != 0, at_t - old, 0.0);
            }
            if (cfg.algorithm == "online_dpo") {
              // The pairs of this rank's units: local rows [0, n) chosen, [n, 2n) rejected.
              const int64_t n = unit_w.size(0);
              const auto seq = torch::where(mask != 0, logp, 0.0).sum(1);  // (2n) summed sequence log-probs
              const auto ref_seq = torch::where(mask != 0, r.ref_logprobs_t1.index_select(0, rows), 0.0).sum(1);
              const auto local = torch::arange(n, torch::kLong);
              const PreferencePairs pairs{local, local + n, local};
              // IPO on the summed log-ratios, as TRL's OnlineDPOTrainer (lengths 1).
              const auto out = online_dpo_loss(seq, ref_seq, pairs, cfg.dpo_beta, dpo_type, torch::ones({2 * n}, seq.options()));
              pg_loss = (out.losses * unit_w).sum() / *pg_normalizer;
              const auto margin = out.chosen_rewards - out.rejected_rewards;
              auto pair_mean = [&](const torch::Tensor& x) {
                return (x.detach().to(torch::kFloat32) * unit_w).sum().item<double>() / *pg_normalizer * tc.grad_accum_steps;
              };
              figures["rewards/chosen"] = pair_mean(out.chosen_rewards);
              figures["rewards/rejected"] = pair_mean(out.rejected_rewards);
              figures["rewards/margins"] = pair_mean(margin);
              figures["rewards/accuracies"] = pair_mean((margin > 0).to(torch::kFloat32));
              figures["logps/chosen"] = pair_mean(seq.narrow(0, 0, n));
              figures["logps/rejected"] = pair_mean(seq.narrow(0, n, n));
            } else if (cfg.algorithm == "best_of_n") {
              // SFT on the kept samples: the token-mean negative log-likelihood, EOS included.
              pg_loss = (torch::where(mask != 0, -logp, 0.0).sum(1) * unit_w).sum() / *pg_normalizer;
            } else if (cfg.algorithm == "ppo" || cfg.algorithm == "reinforce++") {
              // Token means over this rank's part of the micro-batch, weighted by its share.
              auto pl = ppo_policy_loss(logp, old, advantages.index_select(0, rows), mask, cfg.clip_range);
              pg_loss = pl.loss * scale;
              clipfrac = pl.clipfrac * weight;
            } else {
              // Sums over this rank's rows divided by the whole minibatch's normaliser, so the
              // micro-batches' and ranks' parts add up to the minibatch's loss.
              const auto A = advantages.index_select(0, rows);
              const double high = cfg.clip_range_high > 0 ? cfg.clip_range_high : cfg.clip_range;
              PgLossOutput pl;
              if (cfg.algorithm == "rloo") {
                pl = rloo_policy_loss(logp, old, A, mask, cfg.clip_range, high, pg_normalizer);
              } else {
                ClippedPgOptions o;
                o.aggregation = aggregation;
                o.epsilon_low = cfg.clip_range;
                o.epsilon_high = high;
                o.beta = kl_ctl->value();
                o.max_completion_length = cfg.max_new_tokens;
                o.normalizer = pg_normalizer;
                pl = clipped_pg_loss(logp, old, A, mask, o, ref_logp.index_select(0, rows));
              }
              pg_loss = pl.loss;
              clipfrac = pl.clip_ratio_region * weight;
            }
            (cfg.ent_coef != 0 ? pg_loss - cfg.ent_coef * scale * entropy : pg_loss).backward();
          };
          auto value_part = [&] {
            if (!critic) return;
            torch::Tensor vals;
            {
              const auto autocast = training_autocast(tc);
              vals = response_values(value, r, rows);
            }
            vl = ppo_value_loss(vals, old_values.index_select(0, rows), adv.returns.index_select(0, rows), mask,
                                cfg.clip_range_value);
            (vl.loss * (cfg.vf_coef * scale)).backward();
          };
          if (k + 1 == tc.grad_accum_steps) reducer.arm();  // the last backward passes send the gradients
          if (dev.is_cpu()) side_by_side(policy_part, value_part);
          else policy_part(), value_part();
          if (first_step) {
            const double off = (log_ratio.exp() - 1).abs().max().item<double>();
            check(off <= cfg.logprob_tolerance, "ppo: the probability ratio on the first minibatch is not 1 (off by " +
                                                    std::to_string(off) + "): rollout and update see different models");
          }
          // Each figure summed so that dividing by the micro-steps gives the minibatches' mean.
          sums["loss/policy"] += pg_loss.item<double>() * double(tc.grad_accum_steps);
          sums["policy/entropy_avg"] += weight * entropy.item<double>();
          for (const auto& [name, x] : figures) sums[name] += x;
          if (!per_prompt) {
            sums["policy/clipfrac"] += clipfrac.item<double>();
            sums["policy/approxkl"] += weight * 0.5 * masked_mean(log_ratio.pow(2), mask).item<double>();
          }
          if (critic) {
            sums["loss/value"] += weight * vl.loss.item<double>();
            sums["val/clipfrac"] += weight * vl.clipfrac.item<double>();
          }
          ++n_mb;
        }
        std::vector<double> none;
        reducer.finish(none);
        const double clip = clip_scale(grad_norm(params), tc.max_grad_norm);
        const int64_t update = (it * cfg.ppo_epochs + epoch) * cfg.minibatches + mb;
        opt.step(lr_at(update, total_updates, tc.warmup_steps, tc.lr, tc.lr_schedule), clip);  // anneals linearly to 0 by default
      }
    }
    if (world > 1) {  // each rank's sums are its weighted shares
      std::vector<double> v;
      for (const auto& [k, x] : sums) v.push_back(x);
      v = group.allreduce_sum(v);
      size_t i = 0;
      for (auto& [k, x] : sums) x = v[i++];
    }
    for (const auto& [k, v] : sums) m[k] = v / double(n_mb);
    if (critic) m["val/explained_variance"] = explained_variance(old_values, adv.returns, r.response_mask).item<double>();
    m["time/training_s"] = seconds_since(t0);
    kl_ctl->update(kl, cfg.rollout_batch);

    for (const char* k : {"loss/policy", "objective/kl"}) check_finite(m[k], k, it + 1, run);
    if (critic) check_finite(m["loss/value"], "loss/value", it + 1, run);
    if (group.is_main()) run.log(m);
    last = m;
    char figures[96];
    std::snprintf(figures, sizeof(figures), "score %.3f kl %.3f len %.1f", m["objective/scores"], kl, m["response_length"]);
    progress.update(it + 1, figures);
    const bool at_end = it + 1 == iterations, stop = stop_after > 0 && it + 1 - start == stop_after;
    if (at_end || stop || (tc.save_every > 0 && (it + 1) % tc.save_every == 0)) save_checkpoint(it + 1);
    if (stop && !at_end) return last;
  }
  // The reference must leave training bit-identical (it is frozen, not just unused).
  check(ref.model->is_packed() || weights_fingerprint(*ref.model) == ref_fingerprint,
        "ppo: the reference model's weights changed during training");
  last["ref/unchanged"] = 1.0;
  if (group.is_main()) write_trained_model(run.model_dir(), policy.model, policy.config, &tok);
  group.barrier();  // the model is on disk before any rank reports the run done
  return last;
}

}  // namespace rlhf
