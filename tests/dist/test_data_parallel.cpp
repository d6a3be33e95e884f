// Data-parallel training equals one process: SFT, reward model, DPO and PPO runs on 2 ranks
// (`rlhf launch`, Gloo on loopback) log the same losses and gradient norms and end with the
// same weights as the same run in one process with the same global batch; a run resumes on
// a different number of ranks.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io.h"
#include "formats/formats.h"
#include "../test_util.h"

using namespace rlhf;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

void write_data(const fs::path& dir) {
  std::string sft, prefs;
  const char* animals[] = {"cat", "dog", "bird", "fish", "frog", "bear", "fox", "owl"};
  for (int i = 0; i < 16; ++i) {
    const std::string a = animals[i % 8], prompt = "Once upon a time there was a " + a;
    sft += json{{"prompt", prompt}, {"completion", " who liked to play " + std::to_string(i) + " games."}}.dump() + "\n";
    prefs += json{{"prompt", prompt},
                  {"chosen", " and the " + a + " was happy and kind."},
                  {"rejected", std::string(i % 2 ? " It was sad." : " and then it ran away from home, " + a + ".")}}
                 .dump() +
             "\n";
  }
  write_file_atomic(dir / "sft.jsonl", sft);
  write_file_atomic(dir / "prefs.jsonl", prefs);
}

std::vector<json> metrics(const fs::path& run) {
  std::vector<json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// The two runs' step metrics and final weights agree to float error.
void expect_same_run(const fs::path& one, const fs::path& two, size_t steps,
                     const std::vector<std::string>& keys = {"loss", "grad_norm"}) {
  const auto a = metrics(one), b = metrics(two);
  ASSERT_EQ(a.size(), steps);
  ASSERT_EQ(b.size(), steps);
  for (size_t i = 0; i < steps; ++i)
    for (const auto& k : keys) {
      ASSERT_TRUE(a[i].contains(k) && b[i].contains(k)) << k;
      EXPECT_NEAR(a[i][k].get<double>(), b[i][k].get<double>(), 1e-5 * (1 + std::abs(a[i][k].get<double>())))
          << "step " << i + 1 << " " << k;
    }
  const auto wa = read_model_files(one / "model").weights, wb = read_model_files(two / "model").weights;
  ASSERT_EQ(wa.size(), wb.size());
  double gap = 0;
  for (const auto& [name, t] : wa) gap = std::max(gap, (t - wb.at(name)).abs().max().item<double>());
  // Summing in another order changes gradients in their last bits, and Adam's first steps
  // (m / sqrt(v), v still tiny) pass such differences on at the size of the step: 1e-4 of
  // weights of order 0.1-1 after three steps at lr 3e-3.
  EXPECT_LT(gap, 1e-4);
  // And training moved the weights (the comparison is not of two untouched copies).
  const auto start = read_model_files(stories()).weights;
  EXPECT_GT((wa.at("model.norm.weight") - start.at("model.norm.weight")).abs().max().item<double>(), 1e-4);
}

struct Case {
  std::string command, data, extra;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.command; }

}  // namespace

class DataParallel : public ::testing::TestWithParam<Case> {};

TEST_P(DataParallel, TwoRanksEqualOneProcess) {
  test::TempDir dir;
  write_data(dir.path);
  const Case& c = GetParam();
  // 8 examples a step: 4 per rank in 2 micro-batches of 2, against 4 micro-batches of 2.
  const std::string args = c.command + " --model " + stories() + " --train-data " + (dir / c.data).string() +
                           " --batch-size 8 --grad-accum-steps 2 --max-steps 3 --lr 0.003 --max-length 48 "
                           "--progress false " +
                           c.extra + " --run-dir ";
  auto one = test::run_cli(args + (dir / "one").string());
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = test::run_cli("launch --nproc 2 -- " + std::string(RLHF_CLI_PATH) + " " + args + (dir / "two").string());
  ASSERT_EQ(two.exit_code, 0) << two.output;
  expect_same_run(dir / "one", dir / "two", 3);
}

INSTANTIATE_TEST_SUITE_P(Trainers, DataParallel,
                         ::testing::Values(Case{"sft", "sft.jsonl", ""},
                                           Case{"rm train", "prefs.jsonl", "--norm-samples 0"},
                                           Case{"dpo", "prefs.jsonl", ""}),
                         [](const auto& info) { return std::string(info.param.command == "rm train" ? "rm" : info.param.command); });

TEST(DataParallelResume, ARunResumesOnAnotherNumberOfRanks) {
  // 4 steps in one process, against 2 steps in one process then 2 more on 2 ranks (constant
  // learning rate, so the schedule does not depend on where the run stopped).
  test::TempDir dir;
  write_data(dir.path);
  const std::string args = "sft --model " + stories() + " --train-data " + (dir / "sft.jsonl").string() +
                           " --batch-size 4 --lr 0.003 --lr-schedule constant --max-length 48 --progress false ";
  ASSERT_EQ(test::run_cli(args + "--max-steps 4 --run-dir " + (dir / "whole").string()).exit_code, 0);
  ASSERT_EQ(test::run_cli(args + "--max-steps 2 --run-dir " + (dir / "split").string()).exit_code, 0);
  auto resumed = test::run_cli("launch --nproc 2 -- " + std::string(RLHF_CLI_PATH) + " " + args +
                               "--max-steps 4 --resume --run-dir " + (dir / "split").string());
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  expect_same_run(dir / "whole", dir / "split", 4);
}

class DataParallelPpo : public ::testing::TestWithParam<std::string> {};

TEST_P(DataParallelPpo, TwoRanksEqualOneProcess) {
  // Rollouts of 8 (4 generated and scored per rank), gathered; 2 minibatches of 2 micro-batches
  // of 2 rows, one per rank. The same metrics (scores and entropies of the samples, KL, losses,
  // clip fractions) and weights. (Responses run to the length limit, so the missing-EOS penalty
  // is off: it would give every response the same score.)
  test::TempDir dir;
  write_data(dir.path);
  auto rm = test::run_cli("rm train --model " + stories() + " --train-data " + (dir / "prefs.jsonl").string() +
                          " --batch-size 4 --max-steps 1 --max-length 48 --norm-samples 0 --progress false --run-dir " +
                          (dir / "rm").string());
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  // online_dpo trains on 4 pairs (one per prompt): 1 minibatch of 2 micro-batches of 2 pairs, one per rank.
  const bool dpo = GetParam() == "online_dpo";
  const std::string args = "ppo --model " + stories() + " --reward-model " + (dir / "rm" / "model").string() +
                           " --train-data " + (dir / "sft.jsonl").string() + " --rollout-batch 8 --minibatches " +
                           (dpo ? "1" : "2") +
                           " --grad-accum-steps 2 --ppo-epochs 2 --max-steps 2 "
                           "--max-new-tokens 12 --penalize-missing-eos false --lr 0.0003 --adaptive-kl true --progress false " +
                           (GetParam() == "ppo" ? "" : "--algorithm " + GetParam() + " --group-size 2 ") + "--run-dir ";
  auto one = test::run_cli(args + (dir / "one").string());
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = test::run_cli("launch --nproc 2 -- " + std::string(RLHF_CLI_PATH) + " " + args + (dir / "two").string());
  ASSERT_EQ(two.exit_code, 0) << two.output;
  std::vector<std::string> keys{"objective/scores", "objective/entropy", "objective/kl", "kl_coef", "response_length",
                                "loss/policy", "policy/entropy_avg"};
  if (dpo) keys.insert(keys.end(), {"rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"});
  else keys.insert(keys.end(), {"objective/advantage_std", "policy/clipfrac", "policy/approxkl"});
  if (GetParam() == "ppo") keys.insert(keys.end(), {"loss/value", "val/explained_variance"});
  expect_same_run(dir / "one", dir / "two", 2, keys);
}

// grpo: groups of 2 samples, the advantages over the gathered rollout, the loss normalized by the
// whole minibatch's tokens. online_dpo: pairs chosen on the gathered rollout, the loss
// normalized by the whole minibatch's pairs.
INSTANTIATE_TEST_SUITE_P(Algorithms, DataParallelPpo, ::testing::Values("ppo", "grpo", "online_dpo"));


TEST(DataParallelChecks, BatchesMustSplitOverRanks) {
  test::TempDir dir;
  write_data(dir.path);
  auto r = test::run_cli("launch --nproc 2 -- " + std::string(RLHF_CLI_PATH) + " sft --model " + stories() +
                         " --train-data " + (dir / "sft.jsonl").string() + " --batch-size 3 --run-dir " +
                         (dir / "odd").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("multiple of grad_accum_steps x ranks"), std::string::npos) << r.output;
  // PPO: 6 rows in 2 minibatches leave micro-batches of 3, which 2 ranks cannot share.
  r = test::run_cli("launch --nproc 2 -- " + std::string(RLHF_CLI_PATH) + " ppo --model " + stories() +
                    " --reward-model x --train-data " + (dir / "sft.jsonl").string() +
                    " --rollout-batch 6 --minibatches 2 --run-dir " + (dir / "ppo").string());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("must be a multiple of the number of ranks"), std::string::npos) << r.output;
}
