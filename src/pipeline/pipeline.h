// The whole RLHF loop as one command: sample K completions per prompt from the policy ->
// a labeler ranks them -> K-choose-2 pairs -> reward model -> PPO against it with a KL
// penalty to the starting policy -> evaluation on held-out prompts. Each stage's outputs
// land in the run directory; a rerun skips stages whose outputs exist (force redoes them).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "train/train_loop.h"

namespace rlhf {

struct PipelineConfig {
  std::string policy;                   // starting policy (and the frozen reference)
  std::string prompts;                  // JSONL {"prompt": ...}
  std::string run_dir = "runs/pipeline";
  std::string device = "cpu", dtype = "float32";
  int64_t seed = 0;
  // Labeling
  std::string labeler = "simulated";    // simulated (sentiment lexicon + Bradley-Terry noise) or web (people)
  double labeler_temperature = 0.3;
  std::string web_host = "127.0.0.1";   // labeler = "web": where the labeling page is served
  int64_t web_port = 8080;              // 0: any free port (printed)
  std::string web_token;                // shared access token; empty: made up and printed
  int64_t labelers_per_prompt = 1;
  int64_t web_rankings = 0;             // rankings to wait for; 0: label_prompts * labelers_per_prompt
  int64_t label_prompts = 160;
  int64_t k = 4;
  int64_t max_new_tokens = 48;
  double temperature = 1.0;
  // Reward model
  int64_t rm_epochs = 2;
  double rm_lr = 1e-3;
  int64_t rm_batch_size = 16;
  double rm_eval_fraction = 0.15;
  // PPO
  int64_t ppo_steps = 40;
  double ppo_lr = 3e-4;
  int64_t rollout_batch = 32;
  int64_t minibatches = 4;
  int64_t ppo_epochs = 4;
  double kl_coef = 0.05;
  bool adaptive_kl = false;
  double kl_target = 6.0;
  bool penalize_missing_eos = false;
  // Evaluation
  int64_t eval_prompts = 64;
  int64_t eval_samples = 2;             // samples per held-out prompt, before and after

  template <class V>
  void visit(V&& v) {
    v("policy", policy, "Starting policy: HF folder, .gguf or llama2.c .bin (also the frozen reference)");
    v("prompts", prompts, "Prompts JSONL ({\"prompt\": ...}); eval_prompts of them are held out");
    v("run_dir", run_dir, "Run directory: every stage's outputs and summary.json");
    v("device", device, "cpu, cuda or cuda:N");
    v("dtype", dtype, "float32 or bfloat16");
    v("seed", seed, "Seed of every random choice");
    v("labeler", labeler, "Who ranks completions: simulated, or web (people, on the labeling page)");
    v("labeler_temperature", labeler_temperature, "Bradley-Terry noise of the simulated labeler (0: exact)");
    v("web_host", web_host, "labeler = web: address the labeling page listens on");
    v("web_port", web_port, "labeler = web: port of the labeling page (0: any free one)");
    v("web_token", web_token, "labeler = web: access token labelers sign in with (empty: made up and printed)");
    v("labelers_per_prompt", labelers_per_prompt, "labeler = web: labelers who rank each prompt");
    v("web_rankings", web_rankings, "labeler = web: rankings to wait for (0: label_prompts * labelers_per_prompt)");
    v("label_prompts", label_prompts, "Prompts whose completions are ranked");
    v("k", k, "Completions per prompt to rank");
    v("max_new_tokens", max_new_tokens, "Completion length at most");
    v("temperature", temperature, "Sampling temperature");
    v("rm_epochs", rm_epochs, "Reward model epochs");
    v("rm_lr", rm_lr, "Reward model learning rate");
    v("rm_batch_size", rm_batch_size, "Reward model batch size (pairs)");
    v("rm_eval_fraction", rm_eval_fraction, "Share of pairs held out to measure the reward model's accuracy");
    v("ppo_steps", ppo_steps, "PPO iterations");
    v("ppo_lr", ppo_lr, "PPO learning rate (annealed linearly to 0)");
    v("rollout_batch", rollout_batch, "Responses per PPO iteration");
    v("minibatches", minibatches, "PPO minibatches per epoch");
    v("ppo_epochs", ppo_epochs, "PPO epochs per rollout");
    v("kl_coef", kl_coef, "KL penalty coefficient (0: no penalty, to show reward hacking)");
    v("adaptive_kl", adaptive_kl, "Adapt the KL coefficient towards kl_target");
    v("kl_target", kl_target, "Target KL of the adaptive controller");
    v("penalize_missing_eos", penalize_missing_eos, "Give responses that never end a fixed penalty score");
    v("eval_prompts", eval_prompts, "Held-out prompts for the evaluation");
    v("eval_samples", eval_samples, "Samples per held-out prompt, before and after");
  }
};

// Runs (or resumes) the pipeline; returns the summary (also written to RUN_DIR/summary.json).
nlohmann::json run_pipeline(const PipelineConfig& cfg, bool force);

}  // namespace rlhf
