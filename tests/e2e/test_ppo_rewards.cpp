// PPO scored by a reward spec with no reward model (rewards/rewards.h): the policy's own head
// becomes the value model, the verifier reads each prompt's gold answer from the prompts file,
// and every iteration logs each term's mean beside the score it trained on.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../test_util.h"
#include "core/io.h"
#include "trainers/ppo_trainer.h"

using namespace rlhf;
using json = nlohmann::json;

TEST(PpoRewards, AVerifierSpecTrainsWithoutARewardModelAndLogsEachTerm) {
  test::TempDir tmp;
  // The "answer" of each prompt is a full stop: stories260K ends some sentences within 16
  // tokens and not others, so the verifier sees both outcomes.
  std::string prompts;
  for (const char* p : {"Once upon a time", "The cat", "Tom and his dog"})
    prompts += json{{"prompt", p}, {"answer", "."}}.dump() + "\n";
  write_file_atomic(tmp / "prompts.jsonl", prompts);
  PpoConfig c;
  c.train.model = (test::data_dir() / "stories260K" / "stories260K.gguf").string();
  c.train.train_data = (tmp / "prompts.jsonl").string();
  c.train.run_dir = (tmp / "run").string();
  c.train.max_steps = 2;
  c.train.progress = false;
  c.rollout_batch = 8;
  c.minibatches = 2;
  c.ppo_epochs = 1;
  c.max_new_tokens = 16;
  c.penalize_missing_eos = false;
  c.reward.terms = "exact_answer + 0.5*lexicon";
  c.reward.answer_pattern = "([.])";
  ASSERT_TRUE(c.reward_model.empty());
  train_ppo(c, false);

  std::istringstream in(read_file(tmp / "run" / "metrics.jsonl"));
  int lines = 0;
  for (std::string l; std::getline(in, l);) {
    if (l.empty()) continue;
    const auto m = json::parse(l);
    if (!m.contains("objective/scores_before_penalties")) continue;  // a line of another kind
    ++lines;
    ASSERT_TRUE(m.contains("reward/exact_answer")) << l;
    ASSERT_TRUE(m.contains("reward/lexicon")) << l;
    const double acc = m["reward/exact_answer"].get<double>();
    EXPECT_GE(acc, 0.0);
    EXPECT_LE(acc, 1.0);
    EXPECT_EQ(acc * c.rollout_batch, std::round(acc * c.rollout_batch)) << "a share of 8 responses";
    // The score trained on is the weighted sum of the logged terms' means.
    EXPECT_NEAR(m["objective/scores_before_penalties"].get<double>(), acc + 0.5 * m["reward/lexicon"].get<double>(), 1e-5)
        << l;
  }
  EXPECT_EQ(lines, 2);
  EXPECT_TRUE(std::filesystem::exists(tmp / "run" / "model" / "config.json"));
}
