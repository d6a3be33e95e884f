// The trainers on the real stories260K model: they learn (behaviour), and the training loop's
// invariants hold (accumulation equals a full batch, resume equals an uninterrupted run).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "core/io.h"
#include "data/collate.h"
#include "losses/losses.h"
#include "formats/safetensors.h"
#include "generate/generator.h"
#include "model/model.h"
#include "../test_util.h"
#include "trainers/dpo_trainer.h"
#include "model/reward_model.h"
#include "trainers/reward_trainer.h"
#include "trainers/sft_trainer.h"
#include "trainers/trainer_util.h"

using namespace rlhf;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

// SFT data from Tiny Shakespeare: each line is the prompt, the next line the completion.
void write_shakespeare_sft(const fs::path& path, size_t first, size_t n) {
  std::istringstream in(read_file(test::data_dir() / "tinyshakespeare" / "input.txt"));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) lines.push_back(l);
  std::string out;
  for (size_t i = first; i < first + n; ++i)
    out += json{{"prompt", lines[i] + "\n"}, {"completion", lines[i + 1]}}.dump() + "\n";
  write_file_atomic(path, out);
}

// Synthetic preferences: the chosen story contains "happy", the rejected one "sad"; the
// rest of both is the same random filler, so only that word separates them.
void write_word_preferences(const fs::path& path, size_t n, uint64_t seed) {
  const std::vector<std::string> words{"the", "dog", "ran", "to", "a", "big", "tree", "and", "saw", "Lily",
                                       "ball", "red", "park", "cat", "jumped", "over", "mom", "said", "hello"};
  std::mt19937_64 rng(seed);
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    std::string a, b;
    for (int k = 0; k < 6; ++k) a += " " + words[rng() % words.size()];
    for (int k = 0; k < 4; ++k) b += " " + words[rng() % words.size()];
    out += json{{"prompt", "Once upon a time"}, {"chosen", a + " happy" + b + "."}, {"rejected", a + " sad" + b + "."}}.dump() + "\n";
  }
  write_file_atomic(path, out);
}

std::vector<json> read_metrics(const fs::path& run_dir) {
  std::istringstream in(read_file(run_dir / "metrics.jsonl"));
  std::vector<json> out;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(json::parse(l));
  return out;
}

SftConfig small_sft(const test::TempDir& tmp, const std::string& run) {
  SftConfig c;
  c.train.model = stories();
  c.train.train_data = (tmp / "sft.jsonl").string();
  c.train.run_dir = (tmp / run).string();
  c.train.batch_size = 8;
  c.train.max_steps = 6;
  c.train.lr = 3e-3;
  c.train.max_length = 64;
  c.train.progress = false;
  return c;
}

// A short run on the preferences in tmp/prefs.jsonl (the reward-model and DPO tests).
TrainConfig small_pref_train(const test::TempDir& tmp, const std::string& run, int64_t batch_size, double lr) {
  TrainConfig c;
  c.model = stories();
  c.train_data = (tmp / "prefs.jsonl").string();
  c.run_dir = (tmp / run).string();
  c.batch_size = batch_size;
  c.lr = lr;
  c.max_length = 64;
  c.progress = false;
  return c;
}

}  // namespace

TEST(Trainers, SftLowersHeldOutLossOnTinyShakespeare) {
  test::TempDir tmp;
  write_shakespeare_sft(tmp / "sft.jsonl", 0, 256);
  write_shakespeare_sft(tmp / "eval.jsonl", 2000, 64);
  auto cfg = small_sft(tmp, "run");
  cfg.train.eval_data = (tmp / "eval.jsonl").string();
  cfg.train.max_steps = 30;
  // Held-out loss of the starting model, by the same loss function.
  auto lm = load_model(stories());
  auto eval = read_sft(tmp / "eval.jsonl");
  std::vector<TokenizedExample> xs;
  for (const auto& e : eval) xs.push_back(tokenize_example(*lm.tokenizer, e.prompt, e.completion, 64));
  auto b = collate(xs, training_pad_id(*lm.tokenizer));
  const double before = [&] {
    torch::NoGradGuard g;
    return sft_loss(lm.model->forward(b.input_ids, {}, b.attention_mask), b.input_ids, b.loss_mask).item<double>();
  }();

  auto m = train_sft(cfg, false);
  EXPECT_LT(m.at("eval/loss"), before - 0.2) << "before " << before;
  auto metrics = read_metrics(tmp / "run");
  ASSERT_EQ(metrics.size(), 30u);
  for (const auto& k : {"loss", "lr", "grad_norm", "step"}) EXPECT_TRUE(metrics[0].contains(k)) << k;
  EXPECT_TRUE(fs::exists(tmp / "run" / "model" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp / "run" / "config.toml"));
  // The exported model loads and has moved away from the start.
  auto trained = load_model(tmp / "run" / "model");
  EXPECT_FALSE(torch::equal(trained.model->weights().at("model.norm.weight"), lm.model->weights().at("model.norm.weight")));
}

TEST(Trainers, AccumulationEqualsTheFullBatch) {
  test::TempDir tmp;
  write_shakespeare_sft(tmp / "sft.jsonl", 0, 48);
  auto full = small_sft(tmp, "full");
  auto accum = small_sft(tmp, "accum");
  accum.train.grad_accum_steps = 8;  // 8 micro-batches of 1 example = one batch of 8
  train_sft(full, false);
  train_sft(accum, false);
  auto a = read_metrics(tmp / "full"), b = read_metrics(tmp / "accum");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i]["loss"].get<double>(), b[i]["loss"].get<double>(), 1e-5) << i;
  auto wa = load_model(tmp / "full" / "model").model->weights(), wb = load_model(tmp / "accum" / "model").model->weights();
  for (const auto& [name, t] : wa)
    // Adam normalizes each coordinate, so float summation-order noise in near-zero gradients
    // can move a weight by a fraction of one step (lr = 3e-3); the losses above agree to 1e-5.
    EXPECT_LT((t - wb.at(name)).abs().max().item<double>(), 1e-3) << name;
}

TEST(Trainers, ResumeEqualsAnUninterruptedRun) {
  test::TempDir tmp;
  write_shakespeare_sft(tmp / "sft.jsonl", 0, 40);  // 5 steps per epoch: the run crosses an epoch
  auto straight = small_sft(tmp, "straight");
  auto resumed = small_sft(tmp, "resumed");
  train_sft(straight, false);
  train_sft(resumed, false, /*stop_after=*/3);
  EXPECT_EQ(read_metrics(tmp / "resumed").size(), 3u);
  train_sft(resumed, true);
  auto a = read_metrics(tmp / "straight"), b = read_metrics(tmp / "resumed");
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i]["step"], b[i]["step"]);
    EXPECT_DOUBLE_EQ(a[i]["loss"].get<double>(), b[i]["loss"].get<double>()) << "step " << i + 1;
  }
  EXPECT_EQ(read_file(tmp / "straight" / "model" / "model.safetensors"), read_file(tmp / "resumed" / "model" / "model.safetensors"));
}

TEST(Trainers, RewardModelLearnsASyntheticPreference) {
  test::TempDir tmp;
  write_word_preferences(tmp / "prefs.jsonl", 256, 1);
  write_word_preferences(tmp / "eval.jsonl", 64, 2);
  RewardConfig c;
  c.train = small_pref_train(tmp, "rm", 16, 3e-3);
  c.train.eval_data = (tmp / "eval.jsonl").string();
  c.train.epochs = 2;
  c.norm_samples = 16;
  c.norm_max_new_tokens = 24;
  c.norm_temperature = 0.7;
  auto m = train_reward_model(c, false);
  EXPECT_GT(m.at("eval/accuracy"), 0.9);
  // The exported reward model scores a happy story above a sad one.
  auto rm = load_reward_model((tmp / "rm" / "model").string());
  auto s = score_texts(rm, {{"Once upon a time", " the dog ran happy to the park."},
                            {"Once upon a time", " the dog ran sad to the park."}}, 64);
  EXPECT_GT(s[0], s[1]);
  // It is normalised on the starting policy's samples drawn as PPO draws them (temperature
  // and length): the same samples, drawn again here (every pair has this one prompt, and the
  // trainer seeds its sampling with the run's seed), score mean 0 and std 1 exactly.
  auto policy = load_model(stories());
  const std::string prompt = "Once upon a time";
  GenerateOptions g;
  g.max_new_tokens = c.norm_max_new_tokens;
  g.sampling.temperature = static_cast<float>(c.norm_temperature);
  g.seed = static_cast<uint64_t>(c.train.seed);
  std::vector<std::pair<std::string, std::string>> samples;
  for (const auto& gen : generate(policy.model, *policy.tokenizer,
                                  std::vector<std::vector<int32_t>>(size_t(c.norm_samples), encode_prompt(*policy.tokenizer, prompt)), g))
    samples.emplace_back(prompt, gen.text);
  const auto r = score_texts(rm, samples, c.train.max_length);
  const double mean = std::accumulate(r.begin(), r.end(), 0.0) / double(r.size());
  double var = 0;
  for (double x : r) var += (x - mean) * (x - mean) / double(r.size());
  EXPECT_NEAR(mean, 0.0, 1e-5);
  EXPECT_NEAR(std::sqrt(var), 1.0, 1e-5);
}

TEST(Trainers, DpoRaisesTheChosenMargin) {
  test::TempDir tmp;
  write_word_preferences(tmp / "prefs.jsonl", 128, 3);
  write_word_preferences(tmp / "eval.jsonl", 32, 4);
  DpoConfig c;
  c.train = small_pref_train(tmp, "dpo", 16, 1e-3);
  c.train.eval_data = (tmp / "eval.jsonl").string();
  c.train.epochs = 2;
  auto before = load_model(stories()).model->weights();
  auto m = train_dpo(c, false);
  EXPECT_GT(m.at("eval/rewards/margins"), 0.1);
  EXPECT_GT(m.at("eval/rewards/accuracies"), 0.8);
  // The reference (the starting model's file) is untouched: loading it again gives the same weights.
  auto after = load_model(stories()).model->weights();
  for (const auto& [name, t] : before) EXPECT_TRUE(torch::equal(t, after.at(name))) << name;
}

// One row per pair (prompt once, chosen, rejected skipping the chosen) gives the losses,
// metrics and weights of one row per completion, for both trainers.
TEST(Trainers, SharedPromptEqualsARowPerCompletion) {
  test::TempDir tmp;
  {
    const std::vector<std::string> words{"the", "dog", "ran", "to", "a", "big", "tree", "and", "saw", "Lily", "ball", "red"};
    std::mt19937_64 rng(5);
    auto text = [&](int n) {
      std::string t;
      for (int k = 0; k < n; ++k) t += " " + words[rng() % words.size()];
      return t;
    };
    std::string out;
    for (int i = 0; i < 48; ++i)  // prompts and completions of different lengths, an empty completion
      out += json{{"prompt", "Once upon a time" + text(1 + rng() % 12)},
                  {"chosen", i == 5 ? std::string() : text(1 + rng() % 10)}, {"rejected", text(1 + rng() % 14)}}.dump() + "\n";
    write_file_atomic(tmp / "prefs.jsonl", out);
  }
  // The first step's metrics (same weights on both sides) to float rounding; later steps,
  // after Adam has turned rounding-level gradient differences into updates of about lr
  // either way, to 1e-4; weights to 5% of what training moved them.
  const auto start = load_model(stories()).model->weights();
  auto compare = [&](const std::string& a, const std::string& b, const std::vector<std::string>& keys) {
    auto ma = read_metrics(tmp / a), mb = read_metrics(tmp / b);
    ASSERT_EQ(ma.size(), mb.size());
    for (size_t i = 0; i < ma.size(); ++i)
      for (const auto& k : keys)
        if (ma[i].contains(k)) {
          const double x = ma[i][k].get<double>(), y = mb[i][k].get<double>();
          EXPECT_NEAR(x, y, (i == 0 ? 2e-6 : 1e-4) * std::max(1.0, std::abs(y))) << k << " at line " << i;
        }
    auto wa = read_safetensors(tmp / a / "model" / "model.safetensors");
    auto wb = read_safetensors(tmp / b / "model" / "model.safetensors");
    for (const auto& [name, t] : wa) {
      if (!start.contains(name)) continue;  // the reward head starts random
      const double moved = (wb.at(name) - start.at(name)).abs().max().item<double>();
      EXPECT_GT(moved, 0.0) << name;
      EXPECT_LT((t - wb.at(name)).abs().max().item<double>(), 0.05 * moved) << name;
    }
  };
  for (const bool share : {true, false}) {
    RewardConfig r;
    r.train = small_pref_train(tmp, "rm" + std::to_string(share), 6, 3e-3);
    r.train.eval_fraction = 0.25;
    r.train.max_steps = 4;
    r.norm_samples = 0;
    r.share_prompt = share;
    train_reward_model(r, false);
    DpoConfig d;
    d.train = r.train;
    d.train.run_dir = (tmp / ("dpo" + std::to_string(share))).string();
    d.train.lr = 1e-3;
    d.share_prompt = share;
    train_dpo(d, false);
  }
  compare("rm1", "rm0", {"loss", "accuracy", "margin", "eval/loss", "eval/accuracy", "eval/margin"});
  compare("dpo1", "dpo0", {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                           "eval/loss", "eval/logps/chosen"});
}

TEST(Trainers, SftRunsInBfloat16) {
  test::TempDir tmp;
  write_shakespeare_sft(tmp / "sft.jsonl", 0, 32);
  auto cfg = small_sft(tmp, "bf16");
  cfg.train.dtype = "bfloat16";
  cfg.train.max_steps = 4;
  auto m = train_sft(cfg, false);
  EXPECT_TRUE(std::isfinite(m.at("loss")));
  EXPECT_EQ(read_safetensors(tmp / "bf16" / "model" / "model.safetensors").at("model.norm.weight").scalar_type(),
            torch::kBFloat16);  // written as trained
  auto trained = load_model(tmp / "bf16" / "model", {.dtype = "bfloat16"});
  auto start = load_model(stories(), {.dtype = "bfloat16"});
  EXPECT_FALSE(torch::equal(trained.model->weights().at("model.layers.0.mlp.up_proj.weight"),
                            start.model->weights().at("model.layers.0.mlp.up_proj.weight")));
}
