// The GPU path against the CPU on the same work: logits, greedy generation and the first
// step of every trainer. Skipped (not passed) where no CUDA device is present; run on a GPU
// machine by bench/gpu_check.sh.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/io.h"
#include "generate/generator.h"
#include "model/model.h"
#include "test_util.h"
#include "trainers/dpo_trainer.h"
#include "trainers/ppo_trainer.h"
#include "trainers/reward_trainer.h"
#include "trainers/sft_trainer.h"

using namespace rlhf;
using json = nlohmann::json;

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// The first logged training loss of a run.
double first_loss(const std::filesystem::path& run) {
  std::istringstream in(read_file(run / "metrics.jsonl"));
  for (std::string l; std::getline(in, l);) {
    auto j = json::parse(l);
    if (j.contains("loss") && j.contains("step")) return j["loss"].get<double>();
  }
  ADD_FAILURE() << "no training loss in " << run;
  return NAN;
}

void write_data(const test::TempDir& tmp) {
  std::string sft, prefs, prompts;
  const char* starts[] = {"Once upon a time", "One day, a little girl", "The cat", "Tom and his dog"};
  for (const char* p : starts) {
    sft += json{{"prompt", p}, {"completion", " went to the park and played."}}.dump() + "\n";
    prefs += json{{"prompt", p}, {"chosen", " was happy and laughed."}, {"rejected", " was sad and cried."}}.dump() + "\n";
    prompts += json{{"prompt", p}}.dump() + "\n";
  }
  write_file_atomic(tmp / "sft.jsonl", sft);
  write_file_atomic(tmp / "prefs.jsonl", prefs);
  write_file_atomic(tmp / "prompts.jsonl", prompts);
}

TrainConfig one_step(const test::TempDir& tmp, const std::string& data, const std::string& device, const std::string& run) {
  TrainConfig t;
  t.model = stories();
  t.train_data = (tmp / data).string();
  t.run_dir = (tmp / run).string();
  t.device = device;
  t.batch_size = 4;
  t.max_steps = 1;
  t.progress = false;
  return t;
}

}  // namespace

TEST_F(Cuda, LogitsMatchCpu) {
  auto cpu = load_model(stories());
  auto gpu = load_model(stories(), {.device = "cuda"});
  torch::NoGradGuard g;
  auto tokens = torch::randint(3, 512, {3, 40}, torch::kLong);
  auto a = cpu.model->forward(tokens), b = gpu.model->forward(tokens.cuda()).cpu();
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
}

TEST_F(Cuda, GreedyGenerationMatchesCpu) {
  auto cpu = load_model(stories());
  auto gpu = load_model(stories(), {.device = "cuda"});
  std::vector<std::vector<int32_t>> prompts{cpu.tokenizer->encode("Once upon a time", {.add_bos = true}),
                                            cpu.tokenizer->encode("The little dog", {.add_bos = true})};
  GenerateOptions opt;
  opt.max_new_tokens = 24;
  opt.sampling.temperature = 0;
  auto a = generate(cpu.model, *cpu.tokenizer, prompts, opt), b = generate(gpu.model, *gpu.tokenizer, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << "prompt " << i;
}

TEST_F(Cuda, FirstStepOfEachTrainerMatchesCpu) {
  test::TempDir tmp;
  write_data(tmp);
  for (const std::string dev : {"cpu", "cuda"}) {
    SftConfig s;
    s.train = one_step(tmp, "sft.jsonl", dev, "sft-" + dev);
    train_sft(s, false);
    RewardConfig r;
    r.train = one_step(tmp, "prefs.jsonl", dev, "rm-" + dev);
    r.norm_samples = 0;
    train_reward_model(r, false);
    DpoConfig d;
    d.train = one_step(tmp, "prefs.jsonl", dev, "dpo-" + dev);
    train_dpo(d, false);
  }
  for (const std::string k : {"sft", "rm", "dpo"}) {
    const double a = first_loss(tmp / (k + "-cpu")), b = first_loss(tmp / (k + "-cuda"));
    EXPECT_NEAR(a, b, 1e-4 * std::max(1.0, std::abs(a))) << k;
  }
}

TEST_F(Cuda, PpoIterationRuns) {
  test::TempDir tmp;
  write_data(tmp);
  PpoConfig c;
  c.train = one_step(tmp, "prompts.jsonl", "cuda", "ppo");
  c.train.max_steps = 2;
  c.rollout_batch = 4;
  c.minibatches = 2;
  c.max_new_tokens = 16;
  c.penalize_missing_eos = false;
  auto reward = [](const auto&, const std::vector<std::string>& responses, const auto&) {
    std::vector<double> out;
    for (const auto& r : responses) out.push_back(double(r.size()) / 64);
    return out;
  };
  auto m = train_ppo(c, false, reward);
  for (const char* k : {"loss/policy", "loss/value", "objective/kl"}) {
    ASSERT_TRUE(m.contains(k)) << k;
    EXPECT_TRUE(std::isfinite(m[k])) << k;
  }
  auto before = load_model(stories()).model->weights();
  auto after = load_model((tmp / "ppo" / "model").string()).model->weights();
  double moved = 0;
  for (auto& [name, w] : before) moved += (w - after.at(name)).abs().sum().item<double>();
  EXPECT_GT(moved, 0) << "the policy did not change";
}
