// PPO on the real stories260K policy with a toy reward: the reward goes up while the KL to
// the reference stays finite, and an interrupted run resumes to the same numbers. Then what a
// run computes, read through its test seams (PpoProbes) and checked against the models
// directly: temperature, value scale and alignment, the score's token, penalties, metrics,
// and the guards firing on injected faults.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "../test_util.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/safetensors.h"
#include "losses/ppo.h"
#include "model/model.h"
#include "feedback/labeler.h"
#include "trainers/ppo_trainer.h"
#include "trainers/trainer_util.h"

using namespace rlhf;
using json = nlohmann::json;

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

std::vector<json> metrics_of(const std::filesystem::path& run) {
  std::istringstream in(read_file(run / "metrics.jsonl"));
  std::vector<json> out;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(json::parse(l));
  return out;
}

// Reward: the share of response tokens that are `target` (a count of one token, normalized).
RewardFn count_reward(int32_t target) {
  return [target](const auto&, const auto&, const std::vector<std::vector<int32_t>>& toks) {
    std::vector<double> out;
    for (const auto& t : toks) out.push_back(t.empty() ? 0.0 : double(std::count(t.begin(), t.end(), target)) / t.size());
    return out;
  };
}

// Reward: the sentiment lexicon's score of the response (the pipeline's gold): dense, so
// a dozen small PPO iterations raise it on every seed tried (a one-token count did not).
RewardFn lexicon_reward() {
  return [lex = SentimentLexicon::builtin()](const auto&, const std::vector<std::string>& responses, const auto&) {
    std::vector<double> out;
    for (const auto& r : responses) out.push_back(lex.score(r));
    return out;
  };
}

PpoConfig toy_config(const test::TempDir& tmp, const std::string& run) {
  std::string prompts;
  for (const char* p : {"Once upon a time", "One day, a little girl", "The cat", "Tom and his dog", "There was a big"})
    prompts += json{{"prompt", p}}.dump() + "\n";
  write_file_atomic(tmp / "prompts.jsonl", prompts);
  PpoConfig c;
  c.train.model = stories();
  c.train.train_data = (tmp / "prompts.jsonl").string();
  c.train.run_dir = (tmp / run).string();
  c.train.lr = 1e-3;
  c.train.max_steps = 12;
  c.train.progress = false;
  c.rollout_batch = 16;
  c.minibatches = 2;
  c.ppo_epochs = 2;
  c.max_new_tokens = 24;
  c.kl_coef = 0.02;
  c.penalize_missing_eos = false;
  return c;
}

}  // namespace

TEST(Ppo, ToyRewardGoesUpWithFiniteKl) {
  test::TempDir tmp;
  auto lm = load_model(stories());
  auto before = lm.model->weights();
  auto cfg = toy_config(tmp, "ppo");
  auto final_metrics = train_ppo(cfg, false, lexicon_reward());
  EXPECT_EQ(final_metrics.at("ref/unchanged"), 1.0);  // the in-memory reference, checked bit for bit
  auto m = metrics_of(tmp / "ppo");
  ASSERT_EQ(m.size(), 12u);
  const double first = (m[0]["objective/scores"].get<double>() + m[1]["objective/scores"].get<double>()) / 2;
  const double last = (m[10]["objective/scores"].get<double>() + m[11]["objective/scores"].get<double>()) / 2;
  // Measured over seeds 0-3, with either attention kernel: first ~0.2-0.3, last 1.1-2.2.
  EXPECT_GT(last, first + 0.5) << "first " << first << " last " << last;
  for (const auto& row : m) {
    EXPECT_TRUE(std::isfinite(row["objective/kl"].get<double>()));
    for (const char* k : {"objective/entropy", "policy/entropy_avg", "objective/scores_before_penalties", "objective/rlhf_reward", "policy/approxkl", "policy/clipfrac", "loss/policy",
                          "loss/value", "val/clipfrac", "val/explained_variance", "kl_coef", "response_length",
                          "time/generation_s", "time/scoring_s", "time/training_s"})
      EXPECT_TRUE(row.contains(k)) << k;
  }
  EXPECT_GT(m[11]["objective/kl"].get<double>(), 0.0);
  // The policy written out moved; the reference (the starting file) did not.
  auto trained = load_model(tmp / "ppo" / "model");
  EXPECT_FALSE(torch::equal(trained.model->weights().at("model.norm.weight"), before.at("model.norm.weight")));
  auto again = load_model(stories()).model->weights();
  for (const auto& [name, t] : before) EXPECT_TRUE(torch::equal(t, again.at(name))) << name;
}

// The critic-free algorithms on the same loop and toy reward: 4 prompts x 4 samples an
// iteration, no value model; each raises the lexicon score. online_dpo trains on each prompt's
// best and worst sample as a pair, best_of_n on its best sample alone.
class PpoAlgorithms : public ::testing::TestWithParam<std::string> {};

TEST_P(PpoAlgorithms, ToyRewardGoesUp) {
  test::TempDir tmp;
  auto cfg = toy_config(tmp, "run");
  cfg.algorithm = GetParam();
  cfg.group_size = 4;
  cfg.kl_coef = 0.02;
  const bool per_prompt = GetParam() == "online_dpo" || GetParam() == "best_of_n";
  auto final_metrics = train_ppo(cfg, false, lexicon_reward());
  EXPECT_EQ(final_metrics.at("ref/unchanged"), 1.0);
  auto m = metrics_of(tmp / "run");
  ASSERT_EQ(m.size(), 12u);
  const double first = (m[0]["objective/scores"].get<double>() + m[1]["objective/scores"].get<double>()) / 2;
  const double last = (m[10]["objective/scores"].get<double>() + m[11]["objective/scores"].get<double>()) / 2;
  EXPECT_GT(last, first + 0.5) << GetParam() << ": first " << first << " last " << last;
  for (const auto& row : m) {
    EXPECT_TRUE(std::isfinite(row["loss/policy"].get<double>()));
    EXPECT_FALSE(row.contains("loss/value"));  // no critic
    if (!per_prompt) EXPECT_GT(row["objective/advantage_std"].get<double>(), 0.0);
    if (GetParam() == "online_dpo")
      for (const char* k : {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                            "logps/rejected", "objective/scores_margin", "objective/kl", "objective/entropy"})
        EXPECT_TRUE(row.contains(k)) << k;
    if (GetParam() == "best_of_n") {
      EXPECT_EQ(row["objective/kept_fraction"].get<double>(), 1.0);  // no min_score: every prompt's best
      EXPECT_GE(row["objective/best_score"].get<double>(), row["objective/scores"].get<double>());
    }
  }
  // No value model in the checkpoint: the policy's parameters only.
  const auto ck = read_safetensors(tmp / "run" / "checkpoint" / "model.safetensors");
  ASSERT_FALSE(ck.empty());
  for (const auto& [name, t] : ck) EXPECT_EQ(name.rfind("value.", 0), std::string::npos) << name;
}

INSTANTIATE_TEST_SUITE_P(CriticFree, PpoAlgorithms, ::testing::Values("grpo", "rloo", "reinforce++", "online_dpo", "best_of_n"),
                         [](const auto& info) { return info.param == "reinforce++" ? std::string("reinforce_pp") : info.param; });

TEST(Ppo, ResumeEqualsAnUninterruptedRun) {
  test::TempDir tmp;
  auto lm = load_model(stories());
  const int32_t target = lm.tokenizer->encode(" the", {})[0];
  auto a = toy_config(tmp, "straight"), b = toy_config(tmp, "resumed");
  a.train.max_steps = b.train.max_steps = 4;
  a.adaptive_kl = b.adaptive_kl = true;  // the controller's state must survive the restart too
  train_ppo(a, false, count_reward(target));
  train_ppo(b, false, count_reward(target), /*stop_after=*/2);
  EXPECT_EQ(metrics_of(tmp / "resumed").size(), 2u);
  train_ppo(b, true, count_reward(target));
  auto ma = metrics_of(tmp / "straight"), mb = metrics_of(tmp / "resumed");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i)
    for (const char* k : {"objective/scores", "objective/kl", "loss/policy", "kl_coef"})
      EXPECT_DOUBLE_EQ(ma[i][k].get<double>(), mb[i][k].get<double>()) << k << " at step " << i + 1;
}

namespace {

// A reward model for tests: stories260K's backbone with a random scalar head, normalised by
// the given gain and bias (the reward is gain * raw + bias).
void write_reward_model(const std::filesystem::path& dir, double gain, double bias) {
  auto files = read_model_files(stories());
  ModelConfig c = files.config;
  c.num_labels = 1;
  c.reward_gain = gain;
  c.reward_bias = bias;
  c.pad_token_id = training_pad_id(*files.tokenizer);
  files.weights.erase("lm_head.weight");
  torch::manual_seed(1);
  files.weights["score.weight"] = torch::randn({1, c.hidden_size});
  Transformer rm(c);
  rm->load_weights(files.weights, "test reward model");
  write_trained_model(dir, rm, c, files.tokenizer.get());
}

// A short run for the seams: one iteration, one epoch of one minibatch (so loss/value is the
// value loss before any update).
PpoConfig one_step(const test::TempDir& tmp, const std::string& run) {
  auto c = toy_config(tmp, run);
  c.train.max_steps = 1;
  c.rollout_batch = 6;
  c.minibatches = 1;
  c.ppo_epochs = 1;
  c.max_new_tokens = 12;
  return c;
}

// Masked comparisons of (B, R) tensors.
double max_gap(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& mask) {
  return torch::where(mask.to(torch::kCPU) != 0, (a.to(torch::kCPU) - b.to(torch::kCPU)).abs(), 0.0).max().item<double>();
}

// log pi(response token | context) (B, R) of `model` at `temperature`, computed here from the
// rollout's ids, independently of the trainer.
torch::Tensor token_logprobs(Transformer& model, const PpoRolloutView& v, double temperature) {
  torch::NoGradGuard ng;
  auto logits = model->forward(v.ids, positions_from_mask(v.mask), v.mask).narrow(1, v.P - 1, v.R) / temperature;
  return torch::log_softmax(logits, -1).gather(2, v.ids.narrow(1, v.P, v.R).unsqueeze(-1)).squeeze(-1);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Ppo, TemperatureReachesPolicyAndReference) {
  // At temperature 0.7 the generator's log-probs, the trainer's and the reference's must all
  // be of softmax(logits / 0.7): the run passes its generator/trainer guard at the default
  // tolerance, and both log-probs it trains on equal the ones computed here from the model.
  test::TempDir tmp;
  auto cfg = one_step(tmp, "temp");
  cfg.temperature = 0.7;
  PpoRolloutView seen;
  PpoProbes probes;
  probes.on_rollout = [&](const PpoRolloutView& v) { seen = v; };
  auto m = train_ppo(cfg, false, count_reward(5), 0, {}, probes);
  auto lm = load_model(stories());
  const auto expected = token_logprobs(lm.model, seen, 0.7);
  EXPECT_LT(max_gap(seen.logprobs, expected, seen.response_mask), 1e-4);
  EXPECT_LT(max_gap(seen.ref_logprobs, expected, seen.response_mask), 1e-4);
  // The test can tell the temperatures apart: at 1 the log-probs are far from these.
  EXPECT_GT(max_gap(token_logprobs(lm.model, seen, 1.0), expected, seen.response_mask), 0.05);
  EXPECT_LT(std::abs(m.at("objective/kl")), 1e-4);  // policy = reference at the first rollout
}

TEST(Ppo, EntropyBonusRaisesEntropyAndIsOnlyLoggedAtZero) {
  // One update on the same rollout (same seeds) with ent_coef 0 and 5: both log the same
  // policy/entropy_avg (the rollout's, before the update; at 0 it is computed without a graph,
  // for the log only), and only the bonus moves the policy towards a flatter distribution.
  test::TempDir tmp;
  auto run = [&](double ent_coef, const std::string& name, PpoRolloutView& seen) {
    auto cfg = one_step(tmp, name);
    cfg.ent_coef = ent_coef;
    cfg.train.lr = 3e-3;
    PpoProbes probes;
    probes.on_rollout = [&seen](const PpoRolloutView& v) { seen = v; };
    return train_ppo(cfg, false, count_reward(5), 0, {}, probes);
  };
  PpoRolloutView s0, s5;
  const auto m0 = run(0.0, "ent0", s0), m5 = run(5.0, "ent5", s5);
  ASSERT_TRUE(torch::equal(s0.ids, s5.ids));
  EXPECT_NEAR(m0.at("policy/entropy_avg"), m5.at("policy/entropy_avg"), 1e-5);
  auto entropy_after = [&](const std::string& name) {
    auto lm = load_model(tmp / name / "model");
    torch::NoGradGuard ng;
    auto logits = lm.model->forward(s0.ids, positions_from_mask(s0.mask), s0.mask).narrow(1, s0.P - 1, s0.R);
    return entropy_from_logits(logits, s0.response_mask).item<double>();
  };
  EXPECT_GT(entropy_after("ent5"), entropy_after("ent0") + 0.01);
}

TEST(Ppo, ValueModelStartsInRewardUnitsAlignedWithTheStates) {
  // The value model comes from a reward model whose rewards are 3 * raw - 20. Its first values
  // must be V(s_t) = 3 * raw(prompt + response[:t]) - 20: the normalisation folded in, read at
  // the position before response token t. With kl_coef 0 and gamma = lam = 1 every return is
  // the row's score, and the first value loss is 0.5 * mean((V - score)^2) in reward units.
  test::TempDir tmp;
  const double gain = 3.0, bias = -20.0;
  write_reward_model(tmp / "rm", gain, bias);
  auto cfg = one_step(tmp, "value");
  cfg.reward_model = (tmp / "rm").string();
  cfg.kl_coef = 0.0;
  cfg.gamma = 1.0;
  cfg.lam = 1.0;
  PpoRolloutView seen;
  PpoProbes probes;
  probes.on_rollout = [&](const PpoRolloutView& v) { seen = v; };
  auto m = train_ppo(cfg, false, {}, 0, {}, probes);

  auto rm = load_model(tmp / "rm");
  torch::Tensor raw;
  {
    torch::NoGradGuard ng;
    raw = rm.model->token_scores(seen.ids, seen.mask).select(2, 0).narrow(1, seen.P - 1, seen.R);  // (B, R)
  }
  const auto values = gain * raw + bias;
  const auto& mask = seen.response_mask;
  EXPECT_LT(max_gap(seen.values, values, mask), 1e-3);

  // The score goes to each row's last response token (EOS when it ended there), nowhere else.
  const auto last = (mask.sum(1) - 1).to(torch::kLong);  // (B)
  for (int64_t b = 0; b < mask.size(0); ++b) {
    for (int64_t t = 0; t < seen.R; ++t) {
      const double expected = t == last[b].item<int64_t>() ? seen.scores[b].item<double>() : 0.0;
      EXPECT_FLOAT_EQ(seen.rewards[b][t].item<float>(), float(expected)) << "row " << b << " token " << t;
    }
  }
  const auto score_per_token = seen.scores.to(torch::kCPU).unsqueeze(1).expand_as(mask);
  EXPECT_LT(max_gap(seen.returns, score_per_token, mask), 1e-4);  // float32 GAE on values near -20
  const double expected_loss =
      0.5 * (torch::where(mask != 0, (values - score_per_token).pow(2), 0.0).sum() / mask.sum()).item<double>();
  EXPECT_NEAR(m.at("loss/value"), expected_loss, 1e-3 * std::max(1.0, expected_loss));
}

TEST(Ppo, ScoresIncludePenaltiesAndEntropyIsPerSequence) {
  // A constant reward of 0.5; a response that never ends scores -1 (missing_eos_penalty),
  // one that ends at EOS or at the stop string "." keeps 0.5; each pays 0.01 per token. The
  // score goes to the response's last generated token (kl_coef 0: the only nonzero reward).
  test::TempDir tmp;
  auto cfg = one_step(tmp, "penalties");
  cfg.rollout_batch = 8;
  cfg.max_new_tokens = 24;
  cfg.penalize_missing_eos = true;
  cfg.missing_eos_penalty = -1.0;
  cfg.length_penalty = 0.01;
  cfg.stop_string = ".";
  cfg.kl_coef = 0.0;
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> tokens;
  RewardFn constant = [&](const auto&, const std::vector<std::string>& r, const std::vector<std::vector<int32_t>>& t) {
    texts = r, tokens = t;
    return std::vector<double>(r.size(), 0.5);
  };
  PpoRolloutView seen;
  PpoProbes probes;
  probes.on_rollout = [&](const PpoRolloutView& v) { seen = v; };
  auto m = train_ppo(cfg, false, constant, 0, {}, probes);
  const int32_t eos = load_model(stories()).tokenizer->eos_id();
  int stopped = 0, unended = 0;
  double mean = 0;
  for (size_t b = 0; b < texts.size(); ++b) {
    const auto& text = texts[b];
    const size_t dot = text.find('.');
    // Cut after the first ".": it is the last character, or there is none.
    EXPECT_TRUE(dot == std::string::npos || dot + 1 == text.size()) << text;
    const bool ended = dot != std::string::npos || (!tokens[b].empty() && tokens[b].back() == eos);
    stopped += dot != std::string::npos;
    unended += !ended;
    const double expected = (ended ? 0.5 : -1.0) - 0.01 * double(tokens[b].size());
    EXPECT_NEAR(seen.scores[b].item<double>(), expected, 1e-6) << text;
    const int64_t n = static_cast<int64_t>(tokens[b].size());
    for (int64_t t = 0; t < seen.R; ++t) {
      EXPECT_EQ(seen.response_mask[b][t].item<float>(), t < n ? 1.0f : 0.0f) << "row " << b << " token " << t;
      EXPECT_FLOAT_EQ(seen.rewards[b][t].item<float>(), t == n - 1 ? seen.scores[b].item<float>() : 0.0f)
          << "row " << b << " token " << t;
    }
    EXPECT_EQ(seen.ids[b][seen.P + n - 1].item<int64_t>(), tokens[b].back());
    mean += expected / double(texts.size());
  }
  EXPECT_GT(stopped, 0);  // the stop string ended some responses, so the test saw it work
  EXPECT_NEAR(m.at("objective/scores"), mean, 1e-6);
  EXPECT_NEAR(m.at("objective/scores_before_penalties"), 0.5, 1e-6);
  EXPECT_NEAR(m.at("objective/rlhf_reward"), mean, 1e-6);
  // objective/entropy as TRL logs it: sum over each response of -log pi(token), mean over the batch.
  const double entropy =
      torch::where(seen.response_mask != 0, -seen.logprobs.to(torch::kCPU), 0.0).sum(1).mean().item<double>();
  EXPECT_NEAR(m.at("objective/entropy"), entropy, 1e-5);
}

TEST(Ppo, GeneratorTrainerGuardMeasuresARealGap) {
  // 0.01 added to one of the generator's log-probs: a tolerance of 1e-3 stops the run and
  // reports the gap; a tolerance of 0.05 lets the same run through.
  test::TempDir tmp;
  PpoProbes probes;
  probes.after_generation = [](torch::Tensor& logprobs) { logprobs[0][0] += 0.01; };
  auto cfg = one_step(tmp, "guard");
  cfg.logprob_tolerance = 1e-3;
  const auto message = error_of([&] { train_ppo(cfg, false, count_reward(5), 0, {}, probes); });
  const auto at = message.find("log-probabilities differ by ");
  ASSERT_NE(at, std::string::npos) << message;
  EXPECT_NEAR(std::stod(message.substr(at + 28)), 0.01, 1e-3) << message;
  cfg.logprob_tolerance = 0.05;
  cfg.train.run_dir = (tmp / "guard_wide").string();
  EXPECT_EQ(error_of([&] { train_ppo(cfg, false, count_reward(5), 0, {}, probes); }), "");
}

TEST(Ppo, RatioGuardFiresWhenRolloutAndUpdateDisagree) {
  // Old log-probs shifted by 0.01 make the first minibatch's ratio exp(-0.01) != 1: the guard
  // must stop the run. A shift of 1e-4, within the tolerance, must not.
  test::TempDir tmp;
  auto run = [&](double shift, const std::string& name) {
    auto cfg = one_step(tmp, name);
    PpoProbes probes;
    probes.before_update = [shift](torch::Tensor& logprobs) { logprobs += shift; };
    return error_of([&] { train_ppo(cfg, false, count_reward(5), 0, {}, probes); });
  };
  EXPECT_NE(run(0.01, "shifted").find("probability ratio on the first minibatch is not 1"), std::string::npos);
  EXPECT_EQ(run(1e-4, "within"), "");
}

TEST(Ppo, GeneratorLogprobsServeAsTheOldOnes) {
  // old_logprobs = "generator" drops the policy's forward pass after generation: the run's
  // numbers equal those of a recomputing run up to float error, and the old log-probs the
  // update sees are the sampler's own (a shift injected into them reaches the ratio guard,
  // where a recomputing run stops at the generator-vs-trainer guard instead).
  test::TempDir tmp;
  auto run = [&](const std::string& source, const std::string& name, double shift, std::string* error) {
    auto cfg = one_step(tmp, name);
    cfg.old_logprobs = source;
    PpoProbes probes;
    torch::Tensor seen;
    probes.after_generation = [shift](torch::Tensor& logprobs) { logprobs += shift; };
    probes.before_update = [&seen](torch::Tensor& logprobs) { seen = logprobs.clone(); };
    Metrics m;
    *error = error_of([&] { m = train_ppo(cfg, false, count_reward(5), 0, {}, probes); });
    return std::make_pair(m, seen);
  };
  std::string err_recompute, err_generator;
  const auto [m_recompute, old_recompute] = run("recompute", "recompute", 0.0, &err_recompute);
  const auto [m_generator, old_generator] = run("generator", "generator", 0.0, &err_generator);
  ASSERT_EQ(err_recompute, "");
  ASSERT_EQ(err_generator, "");
  EXPECT_LT((old_recompute - old_generator).abs().max().item<double>(), 1e-4);
  EXPECT_FALSE(torch::equal(old_recompute, old_generator));  // really two sources
  for (const char* k : {"loss/policy", "loss/value", "objective/kl", "objective/entropy", "policy/approxkl"})
    EXPECT_NEAR(m_recompute.at(k), m_generator.at(k), 1e-4) << k;

  std::string shifted_recompute, shifted_generator;
  run("recompute", "shifted_recompute", 0.01, &shifted_recompute);
  run("generator", "shifted_generator", 0.01, &shifted_generator);
  EXPECT_NE(shifted_recompute.find("log-probabilities differ by"), std::string::npos) << shifted_recompute;
  EXPECT_NE(shifted_generator.find("probability ratio on the first minibatch is not 1"), std::string::npos)
      << shifted_generator;

  auto cfg = one_step(tmp, "bf16");
  cfg.old_logprobs = "generator";
  cfg.train.precision = "bf16";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("needs precision"), std::string::npos);
  cfg.old_logprobs = "cached";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("old_logprobs must be"), std::string::npos);
}

TEST(Ppo, FrozenModelsRunPackedInBf16AndQ8_0) {
  // frozen_weights packs the reference and the reward model for inference. The same rollout
  // (the policy is untouched) gets reference log-probs and scores that differ from float32's by
  // the format's rounding only: more than float error, far less than a different model.
  test::TempDir tmp;
  write_reward_model(tmp / "rm", 2.0, 0.5);
  std::map<std::string, PpoRolloutView> seen;
  for (const std::string w : {"f32", "bf16", "q8_0"}) {
    auto cfg = one_step(tmp, w);
    cfg.reward_model = (tmp / "rm").string();
    cfg.frozen_weights = w;
    PpoProbes probes;
    probes.on_rollout = [&seen, w](const PpoRolloutView& v) { seen[w] = v; };
    train_ppo(cfg, false, {}, 0, {}, probes);
  }
  const auto& f = seen.at("f32");
  EXPECT_LT(max_gap(f.ref_logprobs, f.logprobs, f.response_mask), 1e-6);  // float32: the policy itself
  for (const std::string w : {"bf16", "q8_0"}) {
    const auto& v = seen.at(w);
    ASSERT_TRUE(torch::equal(v.ids, f.ids)) << w;
    const double ref_gap = max_gap(v.ref_logprobs, f.ref_logprobs, f.response_mask);
    EXPECT_GT(ref_gap, 1e-5) << w;
    EXPECT_LT(ref_gap, 0.25) << w;
    const double score_gap = (v.scores - f.scores).abs().max().item<double>();
    EXPECT_GT(score_gap, 1e-6) << w;
    EXPECT_LT(score_gap, 0.1 * (1 + f.scores.abs().max().item<double>())) << w;
  }
  auto cfg = one_step(tmp, "bad");
  cfg.frozen_weights = "int4";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("frozen_weights must be"), std::string::npos);
}

TEST(Ppo, LengthPenaltyMustBeFinite) {
  test::TempDir tmp;
  auto cfg = one_step(tmp, "nan");
  cfg.length_penalty = std::nan("");
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("length_penalty"), std::string::npos);
}

TEST(Ppo, AlgorithmSettingsAreChecked) {
  test::TempDir tmp;
  auto cfg = one_step(tmp, "bad");
  cfg.algorithm = "a2c";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("algorithm must be"), std::string::npos);
  cfg.algorithm = "grpo";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find(">= 2 for grpo"), std::string::npos);
  cfg.group_size = 4;  // rollout_batch 6
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("multiple of group_size"), std::string::npos);
  cfg.group_size = 2;
  cfg.loss_type = "sum";
  EXPECT_NE(error_of([&] { train_ppo(cfg, false, count_reward(5)); }).find("loss_type must be"), std::string::npos);
  cfg.loss_type = "dapo";
  auto error = [&](const std::function<void(PpoConfig&)>& change) {
    auto c = cfg;
    change(c);
    return error_of([&] { train_ppo(c, false, count_reward(5)); });
  };
  auto has = [](const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; };
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "online_dpo", c.group_size = 1; }), ">= 2 for online_dpo"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "best_of_n", c.group_size = 1; }), ">= 2 for best_of_n"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "online_dpo", c.dpo_beta = 0; }), "dpo_beta"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "online_dpo", c.dpo_loss = "hinge"; }), "dpo_loss must be"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "best_of_n", c.best_of_n_min_score = std::nan(""); }),
                  "best_of_n_min_score"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "ppo", c.group_size = 1, c.dynamic_sampling = true; }),
                  "dynamic_sampling is for grpo and rloo"));
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.dynamic_sampling = true, c.max_sampling_rounds = 0; }), "max_sampling_rounds"));
  // online_dpo and best_of_n split rollout_batch / group_size units (3 here) into the minibatches.
  EXPECT_TRUE(has(error([](PpoConfig& c) { c.algorithm = "online_dpo", c.minibatches = 2; }),
                  "rollout_batch / group_size (3) must be a multiple of minibatches"));
}

namespace {

// Summed log-probs (B) of each row's response at temperature 1, computed here from the model.
torch::Tensor sequence_logprobs_t1(Transformer& model, const PpoRolloutView& v) {
  return torch::where(v.response_mask != 0, token_logprobs(model, v, 1.0), 0.0).sum(1);
}

}  // namespace

TEST(Ppo, OnlineDpoStartsAtLog2PerPairWithLogprobsAtTemperature1) {
  // Policy = reference at the first update: every pair's log-ratio difference is 0, so the
  // sigmoid loss is log 2 per pair and the implicit rewards are 0; IPO's is (0 - 1/(2 beta))^2.
  // logps/chosen is the chosen samples' summed log-probs at temperature 1 (as TRL's), though
  // they were sampled at 0.7. Pairs: per group of 2, the first unless the second scored higher.
  test::TempDir tmp;
  auto run = [&](const std::string& loss, PpoRolloutView* seen) {
    auto cfg = one_step(tmp, loss);
    cfg.algorithm = "online_dpo";
    cfg.group_size = 2;
    cfg.rollout_batch = 8;  // 4 pairs, one minibatch, one epoch: the metrics are of the first update
    cfg.temperature = 0.7;
    cfg.dpo_loss = loss;
    PpoProbes probes;
    probes.on_rollout = [seen](const PpoRolloutView& v) { *seen = v; };
    RewardFn chars = [](const auto&, const std::vector<std::string>& r, const auto&) {
      std::vector<double> out;
      for (const auto& t : r) out.push_back(double(t.size()) / 100);
      return out;
    };
    return train_ppo(cfg, false, chars, 0, {}, probes);
  };
  PpoRolloutView seen;
  const auto m = run("sigmoid", &seen);
  EXPECT_NEAR(m.at("loss/policy"), std::log(2.0), 1e-5);
  for (const char* k : {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"})
    EXPECT_NEAR(m.at(k), 0.0, 1e-5) << k;
  auto lm = load_model(stories());
  const auto seq = sequence_logprobs_t1(lm.model, seen);
  const auto s = seen.scores.to(torch::kCPU);
  double chosen = 0, rejected = 0, margin = 0;
  for (int64_t p = 0; p < 4; ++p) {
    const int64_t c = s[2 * p].item<double>() >= s[2 * p + 1].item<double>() ? 2 * p : 2 * p + 1, r = 4 * p + 1 - c;
    chosen += seq[c].item<double>() / 4;
    rejected += seq[r].item<double>() / 4;
    margin += (s[c] - s[r]).item<double>() / 4;
  }
  EXPECT_NEAR(m.at("logps/chosen"), chosen, 1e-3);
  EXPECT_NEAR(m.at("logps/rejected"), rejected, 1e-3);
  EXPECT_NEAR(m.at("objective/scores_margin"), margin, 1e-6);
  // At 0.7 the summed log-probs differ: the test tells the temperatures apart.
  const auto seq_07 = torch::where(seen.response_mask != 0, token_logprobs(lm.model, seen, 0.7), 0.0).sum(1);
  EXPECT_GT((seq_07 - seq).abs().max().item<double>(), 0.1);
  PpoRolloutView seen_ipo;
  EXPECT_NEAR(run("ipo", &seen_ipo).at("loss/policy"), 1.0 / (4 * 0.1 * 0.1), 1e-3);  // dpo_beta 0.1
}

TEST(Ppo, BestOfNFineTunesOnEachPromptsBestSampleAboveMinScore) {
  // 4 prompts x 4 samples scored by their length in characters; a prompt is kept when its best
  // sample reaches the median best. loss/policy of the one update (before it) is the token-mean
  // NLL at temperature 1 of the kept best samples, EOS included, computed here from the model.
  test::TempDir tmp;
  RewardFn chars = [](const auto&, const std::vector<std::string>& r, const auto&) {
    std::vector<double> out;
    for (const auto& t : r) out.push_back(double(t.size()));
    return out;
  };
  auto cfg = one_step(tmp, "probe");
  cfg.algorithm = "best_of_n";
  cfg.group_size = 4;
  cfg.rollout_batch = 16;
  cfg.temperature = 0.8;
  PpoRolloutView seen;
  PpoProbes probes;
  probes.on_rollout = [&seen](const PpoRolloutView& v) { seen = v; };
  train_ppo(cfg, false, chars, 0, {}, probes);
  // The same run (same seeds, same samples) with a threshold dropping some prompts.
  const auto s = seen.scores.to(torch::kCPU).reshape({4, 4});
  const auto best = std::get<0>(s.max(1));  // (4)
  const double threshold = std::get<0>(best.sort()).index({2}).item<double>();  // 2 of 4 at least
  cfg.best_of_n_min_score = threshold;
  cfg.train.run_dir = (tmp / "threshold").string();
  PpoRolloutView again;
  probes.on_rollout = [&again](const PpoRolloutView& v) { again = v; };
  const auto m = train_ppo(cfg, false, chars, 0, {}, probes);
  ASSERT_TRUE(torch::equal(again.ids, seen.ids));
  auto lm = load_model(stories());
  const auto logp = token_logprobs(lm.model, seen, 1.0);
  double nll = 0, tokens = 0, kept = 0, best_sum = 0;
  for (int64_t p = 0; p < 4; ++p) {
    const int64_t b = 4 * p + s[p].argmax().item<int64_t>();  // the first of equals
    if (best[p].item<double>() < threshold) continue;
    ++kept;
    best_sum += best[p].item<double>();
    nll -= torch::where(seen.response_mask[b] != 0, logp[b], 0.0).sum().item<double>();
    tokens += seen.response_mask[b].sum().item<double>();
  }
  ASSERT_LT(kept, 4);  // the threshold dropped a prompt
  EXPECT_EQ(m.at("objective/kept_fraction"), kept / 4);
  EXPECT_NEAR(m.at("objective/best_score"), best_sum / kept, 1e-4);
  EXPECT_NEAR(m.at("loss/policy"), nll / tokens, 1e-4);
}

TEST(Ppo, DynamicSamplingReplacesGroupsWithoutSignal) {
  // Scores vary between samples for two of the five prompts and are constant for the others: a
  // GRPO batch of 4 groups has few groups with signal. Dynamic sampling draws further rounds of
  // prompts until every group of the batch has signal (the rollout keeps its 16 rows); with
  // every score constant it gives up after max_sampling_rounds and fills the batch anyway.
  test::TempDir tmp;
  auto varied = [](bool any) -> RewardFn {
    return [any](const std::vector<std::string>& p, const std::vector<std::string>& r, const auto&) {
      std::vector<double> out;
      for (size_t i = 0; i < r.size(); ++i)
        out.push_back(any && (p[i] == "The cat" || p[i] == "Tom and his dog") ? double(r[i].size()) : 1.0);
      return out;
    };
  };
  auto run = [&](const std::string& name, bool dynamic, bool any, PpoRolloutView* seen) {
    auto cfg = toy_config(tmp, name);
    cfg.algorithm = "grpo";
    cfg.group_size = 4;
    cfg.train.max_steps = 2;
    cfg.ppo_epochs = 1;
    cfg.max_new_tokens = 12;
    cfg.dynamic_sampling = dynamic;
    cfg.max_sampling_rounds = 6;
    PpoProbes probes;
    probes.on_rollout = [seen](const PpoRolloutView& v) { *seen = v; };
    train_ppo(cfg, false, varied(any), 0, {}, probes);
    return metrics_of(tmp / name);
  };
  PpoRolloutView plain_seen, dynamic_seen, none_seen;
  const auto plain = run("plain", false, true, &plain_seen);
  const auto dynamic = run("dynamic", true, true, &dynamic_seen);
  ASSERT_EQ(plain.size(), 2u);
  ASSERT_EQ(dynamic.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_LT(plain[i]["objective/groups_with_signal"].get<double>(), 1.0) << i;
    EXPECT_FALSE(plain[i].contains("objective/sampling_rounds"));
    EXPECT_EQ(dynamic[i]["objective/groups_with_signal"].get<double>(), 1.0) << i;
    EXPECT_GT(dynamic[i]["objective/sampling_rounds"].get<double>(), 1.0) << i;
  }
  // The last batch, read directly: 16 rows, every group's scores differ.
  ASSERT_EQ(dynamic_seen.scores.size(0), 16);
  const auto groups = dynamic_seen.scores.to(torch::kCPU).reshape({4, 4});
  for (int64_t g = 0; g < 4; ++g) EXPECT_GT((groups[g].max() - groups[g].min()).item<double>(), 0.0) << g;
  const auto none = run("none", true, false, &none_seen);
  for (const auto& row : none) {
    EXPECT_EQ(row["objective/groups_with_signal"].get<double>(), 0.0);
    EXPECT_EQ(row["objective/sampling_rounds"].get<double>(), 6.0);
  }
  EXPECT_EQ(none_seen.scores.size(0), 16);
}
