// The training commands' configuration: TOML file, flags overriding it, the resolved copy in
// the run directory, and clear one-line errors for bad configs and bad data.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <tuple>

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

TEST(CliTrain, OutOfRangeHyperparametersStopBeforeTraining) {
  TempDir tmp;
  write_sft(tmp / "sft.jsonl", 4);
  const std::string base = "--model " + stories() + " --train-data " + (tmp / "sft.jsonl").string() + " --run-dir " +
                           (tmp / "run").string() + " ";
  for (const auto& [cmd, flag, field] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"sft", "--lr nan", "lr"},
           {"sft", "--lr inf", "lr"},
           {"sft", "--lr -0.1", "lr"},
           {"sft", "--epochs 0", "epochs"},
           {"sft", "--max-length 0", "max_length"},
           {"sft", "--warmup-steps -5", "warmup_steps"},
           {"sft", "--precision fp16", "precision"},
           {"rm train", "--eval-fraction 1.5", "eval_fraction"},
           {"dpo", "--label-smoothing 2", "label_smoothing"},
           {"ppo", "--gamma 2 --reward-model x", "gamma"},
           {"ppo", "--ppo-epochs 0 --reward-model x", "ppo_epochs"}}) {
    auto r = run_cli(cmd + " " + base + flag);
    EXPECT_EQ(r.exit_code, 1) << cmd << " " << flag << ": " << r.output;
    EXPECT_NE(r.output.find(field + " must be"), std::string::npos) << cmd << " " << flag << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "model")) << flag;
  }
}

TEST(CliTrain, ResumeFromACheckpointWithANegativeStepIsAnErrorNamingTheFile) {
  TempDir tmp;
  write_sft(tmp / "sft.jsonl", 8);
  const std::string args = "sft --model " + stories() + " --train-data " + (tmp / "sft.jsonl").string() +
                           " --batch-size 4 --max-steps 2 --max-length 32 --run-dir " + (tmp / "run").string();
  ASSERT_EQ(run_cli(args).exit_code, 0);
  const auto state = tmp / "run" / "checkpoint" / "state.json";
  auto j = nlohmann::json::parse(read_file(state));
  j["step"] = -1;
  write_file_atomic(state, j.dump());
  auto r = run_cli(args + " --resume");
  EXPECT_EQ(r.exit_code, 1) << r.output;  // was SIGSEGV
  EXPECT_NE(r.output.find(state.string()), std::string::npos) << r.output;
}

TEST(CliTrain, DataPathsResolveThroughRlhfData) {
  // "data:" and "${RLHF_DATA}" in a config or flag name files in the data folder; a missing one
  // says where it was looked for and how to get the files.
  TempDir tmp;
  write_sft(tmp / "sft.jsonl", 4);
  write_file_atomic(tmp / "cfg.toml", "model = \"data:stories260K/stories260K.gguf\"\nmax_steps = 1\nbatch_size = 4\n");
  auto r = run_cli("sft --config " + (tmp / "cfg.toml").string() + " --train-data " + (tmp / "sft.jsonl").string() +
                   " --run-dir " + (tmp / "run").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("sft --model '${RLHF_DATA}/stories260K/stories260K.gguf' --train-data " + (tmp / "sft.jsonl").string() +
              " --max-steps 1 --batch-size 4 --run-dir " + (tmp / "run2").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli("sft --model data:nothing/here.gguf --train-data " + (tmp / "sft.jsonl").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("nothing/here.gguf"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("scripts/get_data.sh"), std::string::npos) << r.output;
  // The demo config names its policy through the data folder, so it runs from any clone layout.
  EXPECT_NE(read_file(std::string(RLHF_SOURCE_DIR) + "/examples/happy_stories.toml").find("policy = \"data:"),
            std::string::npos);
}

TEST(CliTrain, ThePipelineTakesStageSettingsFromTablesAndFlags) {
  // [ppo] / [rm] tables and --ppo.x flags set the stages' own fields (one declaration each);
  // the resolved config keeps them; a stage field the pipeline sets itself is refused.
  TempDir tmp;
  write_file_atomic(tmp / "p.toml", "policy = \"data:stories260K/stories260K.gguf\"\nprompts = \"" +
                                        std::string(RLHF_SOURCE_DIR) + "/examples/happy_stories_prompts.jsonl\"\n"
                                        "run_dir = \"" + (tmp / "run").string() + "\"\n[ppo]\nvf_coef = 0.37\n"
                                        "gamma = 3.0\n[rm]\nlr = 0.0042\n");
  auto r = run_cli("pipeline " + (tmp / "p.toml").string() + " --ppo.whiten-rewards true --ppo.lam 0.5");
  EXPECT_EQ(r.exit_code, 1) << r.output;  // gamma 3 is out of range: checked before any stage runs
  EXPECT_NE(r.output.find("gamma must be"), std::string::npos) << r.output;
  const auto saved = read_file(tmp / "run" / "config.toml");
  EXPECT_NE(saved.find("ppo.vf_coef = 0.37"), std::string::npos) << saved;
  EXPECT_NE(saved.find("ppo.whiten_rewards = true"), std::string::npos) << saved;
  EXPECT_NE(saved.find("ppo.lam = 0.5"), std::string::npos) << saved;
  EXPECT_NE(saved.find("rm.lr = 0.0042"), std::string::npos) << saved;
  EXPECT_NE(saved.find("ppo.clip_range = 0.2"), std::string::npos) << saved;  // the stage's default
  EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "rankings.jsonl"));
  // The reward model's own settings are checked before the first stage too.
  r = run_cli("pipeline " + (tmp / "p.toml").string() + " --ppo.gamma 1 --rm.norm-samples -1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("norm_samples must be"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "rankings.jsonl"));
  write_file_atomic(tmp / "q.toml", "policy = \"x\"\n[ppo]\nreward_model = \"y\"\n");
  r = run_cli("pipeline " + (tmp / "q.toml").string());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("ppo.reward_model"), std::string::npos) << r.output;
}
