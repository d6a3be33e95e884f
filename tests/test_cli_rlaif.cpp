// rlhf rlaif label | agreement from the command line with stories260K as the feedback model:
// the outputs and their soft labels, the reward model trained on them, the agreement figure
// on HH-RLHF pairs, and one-line errors for bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/io.h"
#include "data/datasets.h"
#include "test_util.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }
std::string hh_pairs() { return (test::data_dir() / "hh-rlhf-harmless-base-test" / "test.jsonl.gz").string(); }

}  // namespace

TEST(CliRlaif, LabelRanksCompletionsWithSoftLabelsThatTrainARewardModel) {
  TempDir tmp;
  write_file_atomic(tmp / "in.jsonl",
                    "{\"prompt\": \"Tell me a story.\", \"completions\": [\"Lily was happy.\", \"Tom was sad.\", \"The dog ran.\"]}\n"
                    "{\"prompt\": \"Say hi.\", \"completions\": [\"Hi!\", \"Go away.\"]}\n");
  auto r = run_cli("rlaif label --feedback-model " + stories_gguf() + " --input " + (tmp / "in.jsonl").string() +
                   " --out " + (tmp / "ai.jsonl").string() + " --seed 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("2 AI rankings (4 pairs"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("answered by logprobs"), std::string::npos) << r.output;
  auto rankings = read_rankings(tmp / "ai.jsonl");
  ASSERT_EQ(rankings.size(), 2u);
  EXPECT_EQ(rankings[0].labeler, "ai");
  const auto P = rankings[0].extra["preference_probs"];
  ASSERT_EQ(P.size(), 3u);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      if (i != j) {
        EXPECT_NEAR(P[i][j].get<double>() + P[j][i].get<double>(), 1.0, 1e-9);
      }
  EXPECT_EQ(rankings[0].extra["ai_feedback"]["pairs"].size(), 3u);
  // The pairs carry the soft labels; a reward model trains on the file.
  auto pairs = rankings_to_pairs(rankings);
  bool soft = false;
  for (const auto& p : pairs) soft |= p.chosen_prob > 0 && p.chosen_prob < 1;
  EXPECT_TRUE(soft);
  r = run_cli("rm train --model " + stories_gguf() + " --train-data " + (tmp / "ai.jsonl").string() + " --run-dir " +
              (tmp / "rm").string() + " --max-steps 1 --norm-samples 0");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(tmp / "rm" / "model" / "config.json"));
  // The same seed gives the same labels (principle draws included).
  r = run_cli("rlaif label --feedback-model " + stories_gguf() + " --input " + (tmp / "in.jsonl").string() +
              " --out " + (tmp / "ai2.jsonl").string() + " --seed 3");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(read_file(tmp / "ai.jsonl"), read_file(tmp / "ai2.jsonl"));
}

TEST(CliRlaif, LabelSamplesCompletionsFromAPolicyAndVotesWhenAsked) {
  TempDir tmp;
  write_file_atomic(tmp / "prompts.jsonl", "{\"prompt\": \"Once upon a time\"}\n{\"prompt\": \"The cat\"}\n");
  auto r = run_cli("rlaif label --feedback-model " + stories_gguf() + " --policy " + stories_gguf() + " --prompts " +
                   (tmp / "prompts.jsonl").string() + " --k 3 --max-new-tokens 8 --feedback-method votes --votes 4 --out " +
                   (tmp / "ai.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("answered by votes"), std::string::npos) << r.output;
  auto rankings = read_rankings(tmp / "ai.jsonl");
  ASSERT_EQ(rankings.size(), 2u);
  EXPECT_EQ(rankings[1].completions.size(), 3u);
  EXPECT_EQ(rankings[1].prompt, "The cat");
}

TEST(CliRlaif, AgreementOnHhPairsPrintsTheFigureWithItsInterval) {
  TempDir tmp;
  auto r = run_cli("rlaif agreement --feedback-model " + stories_gguf() + " --pairs " + hh_pairs() +
                   " --limit 12 --out " + (tmp / "agree.json").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("agreement with human labels: "), std::string::npos) << r.output;
  auto j = json::parse(read_file(tmp / "agree.json"));
  EXPECT_EQ(j["n"], 12);
  ASSERT_EQ(j["records"].size(), 12u);
  // The figure is the share of pairs where the AI prefers the human's choice (ties half).
  double agree = 0;
  for (const auto& rec : j["records"]) {
    const double p = rec["p_chosen"].get<double>();
    agree += p > 0.5 ? 1 : p == 0.5 ? 0.5 : 0;
    EXPECT_NEAR(p, 0.5 * (rec["p_chosen_as_a"].get<double>() + rec["p_chosen_as_b"].get<double>()), 1e-9);
  }
  EXPECT_NEAR(j["agreement"].get<double>(), agree / 12, 1e-12);
  EXPECT_LE(j["agreement_ci95"][0].get<double>(), j["agreement"].get<double>());
  EXPECT_GE(j["agreement_ci95"][1].get<double>(), j["agreement"].get<double>());
}

TEST(CliRlaif, BadInputIsAOneLineError) {
  TempDir tmp;
  write_file_atomic(tmp / "one.jsonl", "{\"prompt\": \"p\", \"completions\": [\"only one\"]}\n");
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"rlaif label --feedback-model " + stories_gguf() + " --input " + (tmp / "one.jsonl").string() + " --out " +
                (tmp / "o.jsonl").string(),
            "one.jsonl:1"},
           {"rlaif label --feedback-model " + stories_gguf() + " --policy " + stories_gguf() + " --out " +
                (tmp / "o.jsonl").string(),
            "--policy needs --prompts"},
           {"rlaif agreement --feedback-model " + stories_gguf() + " --pairs " + (tmp / "missing.jsonl").string(),
            "missing.jsonl"},
           {"rlaif agreement --feedback-model " + stories_gguf() + " --pairs " + hh_pairs() + " --feedback-method maybe",
            "feedback method"},
       }) {
    auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
    EXPECT_FALSE(std::filesystem::exists(tmp / "o.jsonl"));
  }
}
