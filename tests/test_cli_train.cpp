// The training commands' configuration: TOML file, flags overriding it, the resolved copy in
// the run directory, and clear one-line errors for bad configs and bad data.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/io.h"
#include "test_util.h"

using namespace rlhf;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

void write_sft(const std::filesystem::path& p, int n) {
  std::string s;
  for (int i = 0; i < n; ++i)
    s += nlohmann::json{{"prompt", "Once upon a time"}, {"completion", " there was a cat number " + std::to_string(i) + "."}}.dump() + "\n";
  write_file_atomic(p, s);
}

}  // namespace

TEST(CliTrain, FlagsOverrideTheConfigFileAndTheResolvedConfigIsSaved) {
  TempDir tmp;
  write_sft(tmp / "sft.jsonl", 8);
  write_file_atomic(tmp / "cfg.toml", "model = \"" + stories() + "\"\ntrain_data = \"" + (tmp / "sft.jsonl").string() +
                                          "\"\nlr = 0.001\nbatch_size = 4\nmax_steps = 2\nmax_length = 32\n");
  auto run = (tmp / "run").string();
  auto r = run_cli("sft --config " + (tmp / "cfg.toml").string() + " --lr 0.002 --run-dir " + run);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto saved = read_file(tmp / "run" / "config.toml");
  EXPECT_NE(saved.find("lr = 0.002"), std::string::npos) << saved;          // the flag won
  EXPECT_NE(saved.find("batch_size = 4"), std::string::npos) << saved;     // the file's value
  EXPECT_NE(saved.find("# Peak learning rate"), std::string::npos) << saved;  // help lines kept
  EXPECT_TRUE(std::filesystem::exists(tmp / "run" / "model" / "config.json"));
  EXPECT_TRUE(std::filesystem::exists(tmp / "run" / "checkpoint" / "optimizer.safetensors"));
}

TEST(CliTrain, UnknownKeyAndWrongTypeInTheConfigAreOneLineErrors) {
  TempDir tmp;
  write_file_atomic(tmp / "bad.toml", "learning_rate = 0.1\n");
  auto r = run_cli("sft --config " + (tmp / "bad.toml").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("bad.toml"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("learning_rate"), std::string::npos) << r.output;
  write_file_atomic(tmp / "bad2.toml", "lr = \"fast\"\n");
  r = run_cli("dpo --config " + (tmp / "bad2.toml").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("'lr' must be a number"), std::string::npos) << r.output;
}

TEST(CliTrain, MalformedDataNamesFileLineAndField) {
  TempDir tmp;
  write_file_atomic(tmp / "prefs.jsonl", "{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n{\"prompt\": \"a\", \"chosen\": \"b\"}\n");
  auto r = run_cli("rm train --model " + stories() + " --train-data " + (tmp / "prefs.jsonl").string() + " --run-dir " +
                   (tmp / "rm").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("prefs.jsonl:2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rejected"), std::string::npos) << r.output;
  // --skip-bad trains on the good line instead.
  r = run_cli("rm train --model " + stories() + " --train-data " + (tmp / "prefs.jsonl").string() + " --run-dir " +
              (tmp / "rm").string() + " --skip-bad true --max-steps 1 --norm-samples 0");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(CliTrain, ScoringWithAPolicyInsteadOfARewardModelIsAnError) {
  TempDir tmp;
  write_file_atomic(tmp / "t.jsonl", "{\"text\": \"hello\"}\n");
  auto r = run_cli("rm score --model " + stories() + " --in " + (tmp / "t.jsonl").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("not a reward model"), std::string::npos) << r.output;
}
