// The one checkpoint/metrics path (train/run_dir.h): every state a kill can leave a save in is
// resumed from the newest complete checkpoint; metrics past it, or from a run killed before
// its first save, are dropped; bad state files and failed writes are errors naming the file;
// the training loop stops on a non-finite loss and rejects out-of-range settings.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/io.h"
#include "test_util.h"
#include "train/run_dir.h"
#include "train/train_loop.h"

using namespace rlhf;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// One parameter and an optimizer over it; save(s) checkpoints w = s.
struct Model {
  torch::Tensor w = torch::zeros({3});
  AdamW::NamedParams params{{"w", w}};
  AdamW opt{params, {}};
  void set(float v) { w.fill_(v); }
};

std::vector<double> logged_steps(const fs::path& dir) {
  std::istringstream in(read_file(dir / "metrics.jsonl"));
  std::vector<double> out;
  for (std::string l; std::getline(in, l);) out.push_back(json::parse(l)["step"].get<double>());
  return out;
}

// A run directory with checkpoints of steps 1 and 2 saved and metrics lines for steps 1-3.
RunDir saved_run(const fs::path& dir) {
  RunDir run(dir, "lr = 1\n");
  EXPECT_FALSE(run.start(false, 10).has_value());
  Model m;
  for (int s = 1; s <= 3; ++s) {
    run.log({{"step", double(s)}});
    m.set(float(s));
    if (s <= 2) run.save(s, m.params, m.opt, json{{"kl_coef", 0.1 * s}});
  }
  return run;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(RunDir, ResumesTheLastCheckpointAndDropsLaterMetrics) {
  test::TempDir tmp;
  saved_run(tmp.path);
  RunDir again(tmp.path, "lr = 1\n");
  auto ck = again.start(true, 10);
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, 2);
  EXPECT_DOUBLE_EQ(ck->extra["kl_coef"].get<double>(), 0.2);
  Model m;
  again.restore(*ck, m.params, m.opt);
  EXPECT_TRUE(torch::equal(m.w, torch::full({3}, 2.f)));
  Model other;  // a model of another shape is refused, naming the file and the tensor
  other.params = {{"v", torch::zeros({3})}};
  const auto msg = error_of([&] { again.restore(*ck, other.params, other.opt); });
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor v"), std::string::npos) << msg;
  EXPECT_EQ(logged_steps(tmp.path), (std::vector<double>{1, 2}));  // step 3 belonged to the killed run
}

TEST(RunDir, AKillBetweenTheRenamesResumesFromTheCompleteNewCheckpoint) {
  // The state PPO's old code lost: checkpoint/ moved away, the complete new one still in
  // checkpoint.tmp/. Resume must take the new one (step 2), not start from 0.
  test::TempDir tmp;
  saved_run(tmp.path);
  fs::rename(tmp / "checkpoint", tmp / "checkpoint.tmp");
  RunDir again(tmp.path, "lr = 1\n");
  auto ck = again.start(true, 10);
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, 2);
  EXPECT_TRUE(fs::exists(tmp / "checkpoint" / "state.json"));  // put back where it belongs
  EXPECT_FALSE(fs::exists(tmp / "checkpoint.tmp"));
}

TEST(RunDir, OnlyTheOldCheckpointLeftIsResumedAndSurvivesTheNextSave) {
  // A kill after checkpoint/ -> checkpoint.old/ while checkpoint.tmp/ was incomplete; then a
  // second kill inside the next save must still leave a checkpoint (the old code deleted
  // checkpoint.old first and restarted from step 0 after such a double crash).
  test::TempDir tmp;
  saved_run(tmp.path);
  fs::rename(tmp / "checkpoint", tmp / "checkpoint.old");
  fs::create_directories(tmp / "checkpoint.tmp");
  write_file_atomic(tmp / "checkpoint.tmp" / "model.safetensors", "half a file");
  RunDir again(tmp.path, "lr = 1\n");
  auto ck = again.start(true, 10);
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, 2);
  EXPECT_TRUE(fs::exists(tmp / "checkpoint" / "state.json"));
  EXPECT_FALSE(fs::exists(tmp / "checkpoint.old"));
  EXPECT_FALSE(fs::exists(tmp / "checkpoint.tmp"));
}

TEST(RunDir, NewestCompleteCheckpointWinsOverAnOlderCurrentOne) {
  // Killed after checkpoint.tmp/ was complete but before checkpoint/ moved away.
  test::TempDir tmp;
  saved_run(tmp.path);
  RunDir run(tmp.path, "lr = 1\n");
  fs::copy(tmp / "checkpoint", tmp / "checkpoint.tmp", fs::copy_options::recursive);
  write_file_atomic(tmp / "checkpoint.tmp" / "state.json", json{{"step", 3}, {"extra", json::object()}}.dump());
  run.log({{"step", 4.0}});
  auto ck = run.start(true, 10);
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->step, 3);
  EXPECT_EQ(logged_steps(tmp.path), (std::vector<double>{1, 2, 3}));
}

TEST(RunDir, AKillBeforeTheFirstCheckpointStartsCleanOnResume) {
  test::TempDir tmp;
  RunDir run(tmp.path, "x = 1\n");
  run.start(false, 10);
  run.log({{"step", 1.0}});
  run.log({{"step", 2.0}});
  RunDir again(tmp.path, "x = 1\n");
  EXPECT_FALSE(again.start(true, 10).has_value());
  EXPECT_FALSE(fs::exists(tmp / "metrics.jsonl"));  // no steps 1-2 twice
}

TEST(RunDir, AFreshStartForgetsTheOldRunsCheckpoint) {
  // Otherwise a fresh run killed before its first save would --resume into the previous run.
  test::TempDir tmp;
  saved_run(tmp.path);
  RunDir fresh(tmp.path, "lr = 2\n");
  EXPECT_FALSE(fresh.start(false, 10).has_value());
  EXPECT_FALSE(fs::exists(tmp / "checkpoint"));
  EXPECT_FALSE(fs::exists(tmp / "metrics.jsonl"));
}

TEST(RunDir, TruncatedAndBadMetricsLinesAreDroppedOnResume) {
  test::TempDir tmp;
  saved_run(tmp.path);
  {
    std::ofstream out(tmp / "metrics.jsonl", std::ios::app);
    out << "{\"step\": 3, \"loss\": 0.";  // the line a kill cut
  }
  RunDir again(tmp.path, "lr = 1\n");
  again.start(true, 10);
  EXPECT_EQ(logged_steps(tmp.path), (std::vector<double>{1, 2}));
}

TEST(RunDir, BadStepsAndBrokenStateFilesAreErrorsNamingTheFile) {
  for (const std::string state : {R"({"step": -3})", R"({"step": 99})", R"({"step": "two"})", R"({"step": 2)"}) {
    test::TempDir tmp;
    saved_run(tmp.path);
    write_file_atomic(tmp / "checkpoint" / "state.json", state);
    RunDir again(tmp.path, "lr = 1\n");
    const auto msg = error_of([&] { again.start(true, 10); });
    EXPECT_NE(msg.find((tmp / "checkpoint" / "state.json").string()), std::string::npos) << state << ": " << msg;
  }
}

TEST(RunDir, AFailedMetricsWriteIsAnError) {
  test::TempDir tmp;
  RunDir run(tmp.path, "x = 1\n");
  run.start(false, 10);
  fs::create_symlink("/dev/full", tmp / "metrics.jsonl");  // every write fails: no space left
  const auto msg = error_of([&] { run.log({{"step", 1.0}}); });
  EXPECT_NE(msg.find("metrics.jsonl"), std::string::npos) << msg;
}

TEST(TrainLoop, ANonFiniteLossStopsTheRunNamingTheStepAndTheLastCheckpoint) {
  test::TempDir tmp;
  TrainConfig cfg;
  cfg.run_dir = tmp.path.string();
  cfg.batch_size = 1;
  cfg.max_steps = 5;
  cfg.save_every = 2;
  cfg.progress = false;
  auto w = torch::zeros({2}, torch::requires_grad());
  TrainLoop loop(cfg, {{"w", w}}, "x = 1\n", 4);
  TrainHooks hooks;
  int64_t calls = 0;
  hooks.count = [](const std::vector<size_t>& ex) { return double(ex.size()); };
  hooks.micro_step = [&](const std::vector<size_t>&) {
    const double scale = ++calls == 3 ? std::nan("") : 1.0;  // step 3 goes bad
    return MicroStep{(w * w).sum() * scale + w.sum(), {}};
  };
  const auto msg = error_of([&] { loop.run(hooks, false); });
  EXPECT_NE(msg.find("step 3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(step 2)"), std::string::npos) << msg;  // the last good checkpoint
  EXPECT_EQ(logged_steps(tmp.path), (std::vector<double>{1, 2}));
  EXPECT_FALSE(fs::exists(tmp / "model"));
}

TEST(TrainLoop, OutOfRangeSettingsAreRejected) {
  auto rejects = [](auto change, const std::string& field) {
    TrainConfig c;
    change(c);
    const auto msg = error_of([&] { validate(c); });
    EXPECT_EQ(msg.rfind(field + " must be", 0), 0u) << field << ": '" << msg << "'";
  };
  rejects([](TrainConfig& c) { c.lr = std::nan(""); }, "lr");
  rejects([](TrainConfig& c) { c.lr = INFINITY; }, "lr");
  rejects([](TrainConfig& c) { c.lr = -1e-4; }, "lr");
  rejects([](TrainConfig& c) { c.epochs = 0; }, "epochs");
  rejects([](TrainConfig& c) { c.epochs = -2; }, "epochs");
  rejects([](TrainConfig& c) { c.max_length = 0; }, "max_length");
  rejects([](TrainConfig& c) { c.warmup_steps = -1; }, "warmup_steps");
  rejects([](TrainConfig& c) { c.eval_fraction = 1.5; }, "eval_fraction");
  rejects([](TrainConfig& c) { c.adam_beta2 = 1.0; }, "adam_beta2");
  TrainConfig ok;
  EXPECT_NO_THROW(validate(ok));
}
