// The one checkpoint / metrics / progress path of every trainer (SFT, reward model, DPO, PPO).
// A run directory holds:
//   config.toml     the resolved config
//   metrics.jsonl   one JSON line per step (optimizer step, or PPO iteration)
//   checkpoint/     model.safetensors, optimizer.safetensors, state.json {step, config, extra}
//   model/          the trained model (written by the trainer at the end)
//   adapter/        with LoRA: the adapter in PEFT's layout (model/ then holds it merged)
// Checkpoints are crash-safe: a new one is written complete (state.json last, every file and
// folder synced) into checkpoint.tmp/, then swapped in through checkpoint.old/; a run killed at
// any moment, even inside a save, resumes from the newest complete checkpoint, and metrics
// lines past it are dropped, so a resumed run's metrics.jsonl equals an uninterrupted run's.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "model/tensor_map.h"
#include "train/optimizer.h"

namespace rlhf {

using Metrics = std::map<std::string, double>;

class RunDir {
 public:
  // config_toml: the resolved config, written as config.toml and kept in each checkpoint.
  RunDir(std::filesystem::path dir, std::string config_toml);

  struct Checkpoint {
    int64_t step = 0;
    TensorMap model, optimizer;
    nlohmann::json extra;  // trainer state beyond weights and moments (e.g. PPO's KL coefficient)
  };

  // Starts (resume = false) or continues (resume = true) the run: writes config.toml; with
  // resume, returns the newest complete checkpoint (after putting it back in checkpoint/ if a
  // save was interrupted) and drops metrics lines past its step. Without resume, or when no
  // checkpoint exists (a run killed before its first save), metrics.jsonl starts empty and
  // nothing is returned. `max_step`: the run's last step; a checkpoint claiming more (or a
  // negative step) is an Error naming the file.
  std::optional<Checkpoint> start(bool resume, int64_t max_step);

  // Writes the checkpoint of `step` (see above): the parameters under their names, the
  // optimizer's state, `extra`. metrics.jsonl is synced first, so the lines a checkpoint covers
  // are on disk whenever the checkpoint is.
  void save(int64_t step, const AdamW::NamedParams& params, const AdamW& optimizer,
            const nlohmann::json& extra = nlohmann::json::object()) const;

  // Copies a checkpoint's weights into `params` and its moments into `optimizer`; a missing or
  // differently shaped tensor is an Error naming the checkpoint file and the tensor.
  void restore(const Checkpoint& ck, AdamW::NamedParams& params, AdamW& optimizer) const;

  // Appends one line to metrics.jsonl; Error naming the file when the write fails.
  void log(const Metrics& m) const;

  // The step of the last checkpoint written or loaded in this process (0: none), for messages.
  int64_t last_checkpoint_step() const { return last_saved_; }
  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path model_dir() const { return dir_ / "model"; }
  // adapter/ beside a run's model/ (trainers export through the model folder they are given).
  static std::filesystem::path adapter_dir_beside(const std::filesystem::path& model_dir) {
    return model_dir.parent_path() / "adapter";
  }

 private:
  std::filesystem::path dir_;
  std::string config_toml_;
  mutable int64_t last_saved_ = 0;
};

// A progress line on a terminal (stderr), redrawn in place: a bar, done/total, the caller's
// figures and the ETA. Shows nothing when disabled or stderr is not a terminal.
class ProgressLine {
 public:
  ProgressLine(bool enabled, int64_t total, int64_t start = 0);
  void update(int64_t done, const std::string& figures);

 private:
  bool show_;
  int64_t total_, start_;
  std::chrono::steady_clock::time_point t0_;
};

// Stops a run whose loss (or another figure) is not finite, naming the step and the last good
// checkpoint, instead of training on and writing a NaN model.
void check_finite(double value, const char* what, int64_t step, const RunDir& run);

}  // namespace rlhf
