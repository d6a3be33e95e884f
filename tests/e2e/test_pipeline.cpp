// The whole loop on a small budget: every stage runs, summary.json has the fields the
// README promises, and a rerun skips the stages whose outputs exist.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "../euro_model.h"
#include "../test_util.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "data/datasets.h"
#include "feedback/redteam.h"
#include "pipeline/pipeline.h"

using namespace rlhf;
using json = nlohmann::json;

namespace {

// The whole loop on a small budget: one RM epoch, one PPO epoch per iteration, 1 sample per
// held-out prompt.
PipelineConfig small_pipeline(const std::string& policy, const std::filesystem::path& run_dir) {
  PipelineConfig c;
  c.policy = policy;
  c.prompts = std::string(RLHF_SOURCE_DIR) + "/examples/happy_stories_prompts.jsonl";
  c.run_dir = run_dir.string();
  c.rm.train.epochs = 1;
  c.ppo.ppo_epochs = 1;
  c.eval_samples = 1;
  return c;
}

}  // namespace

TEST(Pipeline, RunsEveryStageWritesTheSummaryAndSkipsDoneStages) {
  test::TempDir tmp;
  auto c = small_pipeline((test::data_dir() / "stories260K" / "stories260K.gguf").string(), tmp / "run");
  c.label_prompts = 24;
  c.ppo.max_new_tokens = 24;
  c.rm.train.eval_fraction = 0.15;
  c.ppo.train.max_steps = 3;
  c.ppo.rollout_batch = 8;
  c.ppo.minibatches = 2;
  c.eval_prompts = 8;
  auto s = run_pipeline(c, false);
  for (const char* k : {"gold_before", "gold_after", "rm_accuracy", "kl", "distinct_2_before", "distinct_2_after",
                        "length_before", "length_after", "rm_score_before", "rm_score_after"})
    EXPECT_TRUE(s.contains(k) && s[k].is_number()) << k;
  ASSERT_TRUE(s["gold_diff_ci95"].is_array() && s["gold_diff_ci95"].size() == 2);
  EXPECT_LE(s["gold_diff_ci95"][0].get<double>(), s["gold_diff_ci95"][1].get<double>());
  EXPECT_EQ(json::parse(read_file(tmp / "run" / "summary.json"))["gold_before"], s["gold_before"]);
  for (const char* f : {"rankings.jsonl", "rm/model/config.json", "ppo/model/config.json", "ppo/metrics.jsonl", "config.toml"})
    EXPECT_TRUE(std::filesystem::exists(tmp / "run" / f)) << f;
  // PPO logs the gold score of every rollout; the report shows it; up to 8 samples are kept.
  const auto ppo_lines = read_file(tmp / "run" / "ppo" / "metrics.jsonl");
  EXPECT_TRUE(json::parse(ppo_lines.substr(0, ppo_lines.find('\n')))["objective/gold"].is_number());
  const auto report = read_file(tmp / "run" / "report.html");
  for (const char* m : {"objective/gold", "objective/scores", "objective/kl", "eval/accuracy"})
    EXPECT_NE(report.find(std::string("data-metric=\"") + m + "\""), std::string::npos) << m;
  EXPECT_EQ(s["samples"].size(), 8u);  // 8 held-out prompts, one sample each
  // Rankings are K-way with the simulated labeler's gold scores kept.
  auto first = json::parse(read_file(tmp / "run" / "rankings.jsonl").substr(0, read_file(tmp / "run" / "rankings.jsonl").find('\n')));
  EXPECT_EQ(first["completions"].size(), 4u);
  EXPECT_EQ(first["labeler"], "simulated");
  // A rerun reuses the stages: the reward model is not retrained (same file bytes).
  const auto rm_before = read_file(tmp / "run" / "rm" / "model" / "model.safetensors");
  const auto mtime = std::filesystem::last_write_time(tmp / "run" / "ppo" / "model" / "model.safetensors");
  run_pipeline(c, false);
  EXPECT_EQ(read_file(tmp / "run" / "rm" / "model" / "model.safetensors"), rm_before);
  EXPECT_EQ(std::filesystem::last_write_time(tmp / "run" / "ppo" / "model" / "model.safetensors"), mtime);
}

// A policy whose samples end inside a character (the bytes of "€", cut after 4 tokens): every
// file the pipeline writes model text to (rankings, summary samples, the report) is written,
// with U+FFFD in place of the cut character, instead of the run dying on json type_error.316.
TEST(Pipeline, WritesModelTextThatEndsInsideACharacter) {
  test::TempDir tmp;
  test::write_euro_model(tmp / "euro");
  auto c = small_pipeline((tmp / "euro").string(), tmp / "run");
  c.label_prompts = 8;
  c.k = 2;
  c.ppo.max_new_tokens = 4;
  c.rm.train.eval_fraction = 0.25;
  c.rm.norm_samples = 4;
  c.ppo.train.max_steps = 1;
  c.ppo.rollout_batch = 2;
  c.ppo.minibatches = 1;
  c.eval_prompts = 2;
  const std::string text = "\xE2\x82\xAC\xEF\xBF\xBD";  // E2 82 AC E2: "€" and a cut one
  run_pipeline(c, false);
  const json summary = json::parse(read_file(tmp / "run" / "summary.json"));
  ASSERT_EQ(summary["samples"].size(), 2u);
  for (const auto& s : summary["samples"]) {
    EXPECT_EQ(s["before"], text);
    EXPECT_EQ(s["after"], text);
  }
  const auto rankings = read_rankings(tmp / "run" / "rankings.jsonl");
  ASSERT_EQ(rankings.size(), 8u);
  EXPECT_EQ(rankings[0].completions, (std::vector<std::string>{text, text}));
  const std::string report = read_file(tmp / "run" / "report.html");
  EXPECT_EQ(valid_utf8(report), report);
  EXPECT_NE(report.find(text), std::string::npos);
}

// RL-CAI on a small budget: the AI labeler (stories260K as the feedback model, in-process)
// ranks the samples with soft labels, the reward model and PPO run on them, and the policy
// is red-teamed before and after; the report shows the red-team table.
TEST(Pipeline, AiLabelsAndRedTeamEvaluationBeforeAndAfter) {
  test::TempDir tmp;
  const std::string stories = (test::data_dir() / "stories260K" / "stories260K.gguf").string();
  auto c = small_pipeline(stories, tmp / "run");
  c.prompts = "advbench";  // RL-CAI trains on red-team prompts
  c.labeler = "ai";
  c.feedback_model = stories;
  c.label_prompts = 6;
  c.k = 3;
  c.ppo.max_new_tokens = 12;
  c.rm.train.eval_fraction = 0.2;
  c.rm.norm_samples = 8;
  c.ppo.train.max_steps = 1;
  c.ppo.rollout_batch = 4;
  c.ppo.minibatches = 1;
  c.eval_prompts = 4;
  c.redteam_eval = true;
  c.redteam.limit = 4;
  c.redteam.max_tokens = 12;
  c.redteam.judge = stories;
  auto s = run_pipeline(c, false);
  const auto rankings = read_rankings(tmp / "run" / "rankings.jsonl");
  ASSERT_EQ(rankings.size(), 6u);
  const auto advbench = read_prompt_set(prompt_set_path("advbench"));
  for (const auto& rk : rankings) {
    EXPECT_TRUE(std::any_of(advbench.begin(), advbench.end(), [&](const auto& p) { return p.prompt == rk.prompt; }));
    EXPECT_EQ(rk.labeler, "ai");
    EXPECT_EQ(rk.extra["preference_probs"].size(), 3u);
  }
  for (const char* key : {"before", "after"}) {
    ASSERT_TRUE(s["redteam"].contains(key)) << key;
    const auto& overall = s["redteam"][key]["overall"];
    EXPECT_EQ(overall["unsafe"].get<int>() + overall["safe"].get<int>(), 8) << key;  // 4 per set, 2 sets
    EXPECT_TRUE(overall["judge"].is_object()) << key;
    EXPECT_TRUE(std::filesystem::exists(tmp / "run" / "redteam" / (std::string(key) + ".jsonl"))) << key;
  }
  const auto file = json::parse(read_file(tmp / "run" / "redteam.json"));
  EXPECT_EQ(file["after"], s["redteam"]["after"]);
  const std::string report = read_file(tmp / "run" / "report.html");
  EXPECT_NE(report.find("Red-team evaluation"), std::string::npos);
  EXPECT_NE(report.find("harmful"), std::string::npos);
}

// labeler = mix with every prompt to the AI (ai_share 1): no labeling page is served.
TEST(Pipeline, MixWithAllPromptsToTheAiNeedsNoPeople) {
  test::TempDir tmp;
  const std::string stories = (test::data_dir() / "stories260K" / "stories260K.gguf").string();
  auto c = small_pipeline(stories, tmp / "run");
  c.labeler = "mix";
  c.ai_share = 1.0;
  c.feedback_model = stories;
  c.label_prompts = 4;
  c.k = 2;
  c.ppo.max_new_tokens = 8;
  c.rm.norm_samples = 4;
  c.ppo.train.max_steps = 1;
  c.ppo.rollout_batch = 2;
  c.ppo.minibatches = 1;
  c.eval_prompts = 2;
  run_pipeline(c, false);
  EXPECT_EQ(read_rankings(tmp / "run" / "rankings.jsonl").size(), 4u);
  EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "labels.sqlite"));
  // Without a feedback model, ai and mix stop before any stage runs.
  c.feedback_model.clear();
  c.run_dir = (tmp / "run2").string();
  EXPECT_THROW(run_pipeline(c, false), Error);
  EXPECT_FALSE(std::filesystem::exists(tmp / "run2" / "rankings.jsonl"));
  // Nor does a red-team set that is not there wait until after PPO to fail.
  c.feedback_model = stories;
  c.redteam_eval = true;
  c.redteam.prompts = (tmp / "no_such_set.jsonl").string();
  EXPECT_THROW(run_pipeline(c, false), Error);
  EXPECT_FALSE(std::filesystem::exists(tmp / "run2" / "rankings.jsonl"));
}

// Every policy algorithm runs as the pipeline's PPO stage (`[ppo] algorithm`), on the same
// labels and reward model: the labeling and reward-model stages run once for the suite, each
// algorithm's run starts from copies of their outputs, so only its policy stage, the evaluation
// and the report run. The report titles the stage by its algorithm and draws its own curves.
struct AlgorithmRun {
  const char* algorithm;
  int64_t group_size;
  const char* title;   // the report's heading of the policy stage
  const char* metric;  // a curve only this family of algorithms logs
};

class PipelineAlgorithms : public ::testing::TestWithParam<AlgorithmRun> {
 protected:
  static void SetUpTestSuite() {
    shared_ = new test::TempDir();
    auto c = base_config(*shared_ / "base");
    c.ppo.train.max_steps = 1;
    run_pipeline(c, false);
  }
  static void TearDownTestSuite() {
    delete shared_;
    shared_ = nullptr;
  }
  static PipelineConfig base_config(const std::filesystem::path& run_dir) {
    auto c = small_pipeline((test::data_dir() / "stories260K" / "stories260K.gguf").string(), run_dir);
    c.label_prompts = 12;
    c.k = 2;
    c.rm.train.eval_fraction = 0.25;
    c.rm.norm_samples = 8;
    c.ppo.max_new_tokens = 12;
    c.ppo.train.max_steps = 2;
    c.ppo.rollout_batch = 8;
    c.ppo.minibatches = 2;
    c.eval_prompts = 4;
    return c;
  }
  static test::TempDir* shared_;
};
test::TempDir* PipelineAlgorithms::shared_ = nullptr;

TEST_P(PipelineAlgorithms, RunsAsThePolicyStageWithItsOwnCurves) {
  const auto& a = GetParam();
  test::TempDir tmp;
  const auto run = tmp / "run";
  std::filesystem::create_directories(run);
  std::filesystem::copy(*shared_ / "base" / "rankings.jsonl", run / "rankings.jsonl");
  std::filesystem::copy(*shared_ / "base" / "rm", run / "rm", std::filesystem::copy_options::recursive);
  auto c = base_config(run);
  c.ppo.algorithm = a.algorithm;
  c.ppo.group_size = a.group_size;
  const auto s = run_pipeline(c, false);
  EXPECT_TRUE(s["gold_after"].is_number());
  EXPECT_TRUE(s["kl"].is_number());
  // The reward model was reused, not retrained.
  EXPECT_EQ(read_file(run / "rm" / "model" / "model.safetensors"),
            read_file(*shared_ / "base" / "rm" / "model" / "model.safetensors"));
  EXPECT_NE(read_file(run / "ppo" / "config.toml").find(std::string("algorithm = '") + a.algorithm + "'"),
            std::string::npos);
  const auto lines = read_file(run / "ppo" / "metrics.jsonl");
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 2);  // one line per iteration
  const auto report = read_file(run / "report.html");
  EXPECT_NE(report.find(std::string("<h2>") + a.title + "</h2>"), std::string::npos) << a.title;
  for (const std::string m : {"objective/scores", "objective/kl", a.metric})
    EXPECT_NE(report.find("data-metric=\"" + m + "\""), std::string::npos) << m;
}

INSTANTIATE_TEST_SUITE_P(
    EachAlgorithm, PipelineAlgorithms,
    ::testing::Values(AlgorithmRun{"ppo", 1, "PPO", "loss/value"}, AlgorithmRun{"grpo", 4, "GRPO", "objective/advantage_std"},
                      AlgorithmRun{"rloo", 4, "RLOO", "objective/advantage_std"},
                      AlgorithmRun{"reinforce++", 1, "REINFORCE++", "objective/advantage_std"},
                      AlgorithmRun{"online_dpo", 2, "Online DPO", "rewards/margins"},
                      AlgorithmRun{"best_of_n", 4, "Best-of-n", "objective/kept_fraction"}),
    [](const auto& info) {
      std::string n = info.param.algorithm;
      for (auto& ch : n)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return n;
    });
