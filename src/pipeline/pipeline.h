// The whole RLHF loop as one command: sample K completions per prompt from the policy ->
// a labeler ranks them -> K-choose-2 pairs -> reward model -> PPO against it with a KL
// penalty to the starting policy -> evaluation on held-out prompts. Each stage's outputs
// land in the run directory; a rerun skips stages whose outputs exist (force redoes them).
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "feedback/redteam.h"        // RedTeamConfig
#include "train/config_fields.h"     // visit_stage
#include "trainers/ppo_trainer.h"    // PpoConfig
#include "trainers/reward_trainer.h" // RewardConfig

namespace rlhf {

struct PipelineConfig {
  std::string policy;                   // starting policy (and the frozen reference)
  std::string prompts;                  // JSONL {"prompt": ...}, or a red-team set: advbench, xstest, a .csv
  std::string run_dir = "runs/pipeline";
  std::string device = "cpu", dtype = "float32";
  int64_t seed = 0;
  // Labeling (samples are drawn with the policy's sampling settings: [ppo] temperature and
  // max_new_tokens, the same for labeling, PPO and the evaluation)
  // simulated (sentiment lexicon + Bradley-Terry noise), web (people), ai (a feedback model
  // under a constitution: RLAIF), or mix (ai_share of the prompts to the AI, the rest to people)
  std::string labeler = "simulated";
  double labeler_temperature = 0.3;
  std::string web_host = "127.0.0.1";   // labeler = "web": where the labeling page is served
  int64_t web_port = 8080;              // 0: any free port (printed)
  std::string web_token;                // shared access token; empty: made up and printed
  int64_t labelers_per_prompt = 1;
  int64_t web_rankings = 0;             // rankings to wait for; 0: label_prompts * labelers_per_prompt
  // AI feedback (labeler = ai or mix)
  std::string feedback_model;           // model path or OpenAI-compatible endpoint URL (key: $OPENAI_API_KEY)
  std::string constitution;             // constitution TOML; empty: the built-in default
  std::string feedback_method = "auto"; // auto (log-probabilities, else votes), logprobs or votes
  int64_t feedback_votes = 8;
  bool feedback_cot = false;
  double ai_share = 0.5;                // labeler = mix: share of the labeling prompts the AI ranks
  // Red-team evaluation of the starting and the trained policy ([redteam] table: sets, limit, judge)
  bool redteam_eval = false;
  int64_t label_prompts = 160;
  int64_t k = 4;
  // Evaluation
  int64_t eval_prompts = 64;
  int64_t eval_samples = 2;             // samples per held-out prompt, before and after
  // The stages, with their own settings and defaults ([rm] and [ppo] tables, --rm.lr flags);
  // the fields in kRmOwned / kPpoOwned are set by the pipeline.
  RewardConfig rm;
  PpoConfig ppo;
  RedTeamConfig redteam;

  // Set by the pipeline from its own fields (model, data, run directory, device, seed) or from
  // the other stage (the reward model's normalisation samples use PPO's sampling settings).
  static inline const std::set<std::string> kRmOwned = {
      "model", "train_data", "eval_data", "run_dir", "device", "dtype", "seed", "data_format",
      "norm_temperature", "norm_max_new_tokens"};
  static inline const std::set<std::string> kRedTeamOwned = {"seed"};
  static inline const std::set<std::string> kPpoOwned = {"model", "train_data", "eval_data", "run_dir", "device",
                                                         "dtype", "seed", "reward_model"};

  template <class V>
  void visit(V&& v) {
    v("policy", policy, "Starting policy: HF folder, .gguf or llama2.c .bin (also the frozen reference)");
    v("prompts", prompts, "Prompts JSONL ({\"prompt\": ...}), or a red-team set (advbench, xstest, a .csv); eval_prompts of them are held out");
    v("run_dir", run_dir, "Run directory: every stage's outputs and summary.json");
    v("device", device, "cpu, cuda or cuda:N");
    v("dtype", dtype, "float32 or bfloat16");
    v("seed", seed, "Seed of every random choice (and of each stage)");
    v("labeler", labeler, "Who ranks completions: simulated, web (people, on the labeling page), ai (a feedback model "
                          "under a constitution) or mix (ai_share of the prompts to the AI, the rest to people)");
    v("labeler_temperature", labeler_temperature, "Bradley-Terry noise of the simulated labeler (0: exact)");
    v("web_host", web_host, "labeler = web: address the labeling page listens on");
    v("web_port", web_port, "labeler = web: port of the labeling page (0: any free one)");
    v("web_token", web_token, "labeler = web: access token labelers sign in with (empty: made up and printed)");
    v("labelers_per_prompt", labelers_per_prompt, "labeler = web: labelers who rank each prompt");
    v("web_rankings", web_rankings, "labeler = web: rankings to wait for (0: label_prompts * labelers_per_prompt)");
    v("feedback_model", feedback_model, "labeler = ai/mix: the feedback model, a path or an OpenAI-compatible endpoint URL");
    v("constitution", constitution, "labeler = ai/mix: constitution TOML (empty: the built-in default)");
    v("feedback_method", feedback_method, "How the feedback model answers: auto (option log-probabilities, else sampled votes), logprobs or votes");
    v("feedback_votes", feedback_votes, "Sampled votes per question when voting");
    v("feedback_cot", feedback_cot, "Chain of thought before each AI label (probabilities clamped to 40-60%)");
    v("ai_share", ai_share, "labeler = mix: share of the labeling prompts ranked by the AI (the rest by people)");
    v("redteam_eval", redteam_eval, "Red-team evaluation of the policy before and after PPO (settings in [redteam])");
    v("label_prompts", label_prompts, "Prompts whose completions are ranked");
    v("k", k, "Completions per prompt to rank");
    v("eval_prompts", eval_prompts, "Held-out prompts for the evaluation");
    v("eval_samples", eval_samples, "Samples per held-out prompt, before and after");
    visit_stage(rm, "rm", kRmOwned, v);
    visit_stage(ppo, "ppo", kPpoOwned, v);
    visit_stage(redteam, "redteam", kRedTeamOwned, v);
  }
};

// Runs (or resumes) the pipeline; returns the summary (also written to RUN_DIR/summary.json).
nlohmann::json run_pipeline(const PipelineConfig& cfg, bool force);

}  // namespace rlhf
