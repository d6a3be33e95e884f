// The loop the SFT, reward-model and DPO trainers share: batches in a seeded order, gradient
// accumulation with an exact normalizer, clipping, AdamW with a schedule, evaluation, and the
// run directory's metrics, progress line and crash-safe checkpoints (train/run_dir.h, which
// PPO uses too). A trainer supplies the per-micro-batch loss; the loop owns everything else.
//
// Data-parallel (dist/process_group.h: WORLD_SIZE ranks, e.g. under `rlhf launch`): every
// rank takes its contiguous share of each global batch, in the same global order as one
// process; the loss is normalized by the whole batch's count and gradients are summed over
// ranks in buckets that go out while the backward pass runs (dist/gradient_reducer.h), so
// each optimizer step is one process's step on the same batch, and the ranks' weights
// stay identical. Rank 0 alone evaluates and writes metrics, checkpoints and the model; on
// resume it reads the checkpoint and sends weights and optimizer state to the others.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dist/gradient_reducer.h"
#include "dist/process_group.h"
#include "model/autocast.h"
#include "model/lora.h"
#include "train/optimizer.h"
#include "train/run_dir.h"

namespace rlhf {

// Fields shared by every trainer's config (each trainer's visit() lists them through
// visit_train_fields, then its own).
struct TrainConfig {
  std::string model;                 // starting model: HF folder, .gguf or llama2.c .bin
  std::string train_data;            // JSONL (or .jsonl.gz)
  std::string eval_data;             // optional; else eval_fraction of train_data is held out
  double eval_fraction = 0.0;
  std::string run_dir = "runs/run";
  std::string device = "cpu";
  std::string dtype = "float32";
  std::string precision = "float32";  // matrix products: "float32" or "bf16" (autocast; master weights stay float32)
  bool checkpoint_activations = false;  // recompute each transformer block in the backward pass
  int64_t seed = 0;
  int64_t batch_size = 8;            // examples per optimizer step (across accumulation)
  int64_t grad_accum_steps = 1;      // micro-batches per optimizer step
  int64_t epochs = 1;
  int64_t max_steps = 0;             // 0: as many as `epochs` give
  int64_t max_length = 256;
  double lr = 5e-5;
  std::string lr_schedule = "linear";
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  bool adam_tf_epsilon = false;
  double max_grad_norm = 1.0;
  int64_t eval_every = 0;            // 0: only at the end
  int64_t save_every = 0;            // 0: only at the end
  bool skip_bad = false;
  bool progress = true;
  double dist_bucket_mb = 25.0;      // data-parallel: gradient all-reduce bucket size
  // LoRA (model/lora.h): with lora_r > 0 only the adapters train; the base stays frozen.
  int64_t lora_r = 0;
  double lora_alpha = 16.0;
  double lora_dropout = 0.0;
  std::string lora_target_modules = "q_proj,v_proj";
};

template <class V>
void visit_train_fields(TrainConfig& c, V&& v) {
  v("model", c.model, "Starting model: Hugging Face folder, .gguf or llama2.c .bin");
  v("train_data", c.train_data, "Training data (JSONL, may be gzip-compressed)");
  v("eval_data", c.eval_data, "Evaluation data; empty: hold out eval_fraction of train_data");
  v("eval_fraction", c.eval_fraction, "Share of train_data held out for evaluation when eval_data is empty");
  v("run_dir", c.run_dir, "Run directory: config, metrics.jsonl, checkpoint/, model/");
  v("device", c.device, "cpu, cuda or cuda:N");
  v("dtype", c.dtype, "Parameter dtype: float32 or bfloat16");
  v("precision", c.precision,
    "Matrix products: float32, or bf16 (mixed precision: bf16 products under autocast; float32 weights, "
    "optimizer state, logits and losses)");
  v("checkpoint_activations", c.checkpoint_activations,
    "Keep only each transformer block's input and recompute the block in the backward pass (less memory, "
    "about one more forward pass of compute)");
  v("seed", c.seed, "Seed of the data order and of everything random");
  v("batch_size", c.batch_size, "Examples per optimizer step (split over grad_accum_steps micro-batches)");
  v("grad_accum_steps", c.grad_accum_steps, "Micro-batches per optimizer step");
  v("epochs", c.epochs, "Passes over the training data");
  v("max_steps", c.max_steps, "Optimizer steps; 0: as many as epochs give");
  v("max_length", c.max_length, "Tokens per example at most (prompt cut from the left)");
  v("lr", c.lr, "Peak learning rate");
  v("lr_schedule", c.lr_schedule, "linear (to 0), cosine (to 0) or constant, after warmup");
  v("warmup_steps", c.warmup_steps, "Linear warmup steps");
  v("weight_decay", c.weight_decay, "Decoupled weight decay (AdamW)");
  v("adam_beta1", c.adam_beta1, "Adam beta1");
  v("adam_beta2", c.adam_beta2, "Adam beta2");
  v("adam_eps", c.adam_eps, "Adam epsilon");
  v("adam_tf_epsilon", c.adam_tf_epsilon, "TensorFlow-style epsilon (added before bias correction: gentler early steps)");
  v("max_grad_norm", c.max_grad_norm, "Clip the global gradient norm to this; 0: off");
  v("eval_every", c.eval_every, "Evaluate every N steps; 0: at the end only");
  v("save_every", c.save_every, "Checkpoint every N steps; 0: at the end only");
  v("skip_bad", c.skip_bad, "Skip malformed data lines (and count them) instead of failing");
  v("progress", c.progress, "Show a progress bar on a terminal");
  v("dist_bucket_mb", c.dist_bucket_mb,
    "Data-parallel runs: MiB of gradients per all-reduce bucket; each bucket is sent as soon as its gradients are "
    "final, overlapping the rest of the backward pass");
  v("lora_r", c.lora_r,
    "LoRA rank: > 0 trains low-rank adapters on the frozen model instead of all of it (RUN_DIR/adapter: the "
    "adapter in PEFT's layout; RUN_DIR/model: the model with it merged); 0: full fine-tuning");
  v("lora_alpha", c.lora_alpha, "LoRA alpha: the adapters' update is scaled by lora_alpha / lora_r");
  v("lora_dropout", c.lora_dropout, "Dropout on the LoRA adapters' input while training");
  v("lora_target_modules", c.lora_target_modules,
    "Projections that get adapters, comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
    "down_proj, or all-linear (all of them)");
}

// The LoRA settings of the shared fields (r = 0: none); base_model is `model`.
LoraConfig lora_config(const TrainConfig& c);

// Range checks of the shared fields (an Error naming the field and the value): a NaN or
// negative lr, zero epochs or an eval_fraction of 1.5 stop before anything is loaded.
void validate(const TrainConfig& c);
// The one shape of a range error: "NAME must be RULE, got VALUE" (an Error unless `ok`).
void check_range(bool ok, const std::string& name, double value, const std::string& rule);

// The autocast scope of a training forward pass on this thread: bf16 products when precision is
// bf16, else none. The loop opens it around each micro-step and evaluation (not the backward
// pass); a trainer that runs forwards itself (PPO) opens it there.
Autocast training_autocast(const TrainConfig& c);

struct MicroStep {
  torch::Tensor loss_sum;   // scalar: the micro-batch's loss SUMMED over its items
  Metrics sums;             // other per-item metrics, summed over the micro-batch's items
};

struct TrainHooks {
  // Loss of one micro-batch (example indices into the training set).
  std::function<MicroStep(const std::vector<size_t>&)> micro_step;
  // Number of items the loss of these examples is averaged over (examples, pairs, or
  // completion tokens): micro-batches are normalized by the whole step's count, so
  // accumulation gives exactly the gradient of the full batch.
  std::function<double(const std::vector<size_t>&)> count;
  std::function<Metrics()> evaluate;                              // may be empty
  std::function<void(const std::filesystem::path&)> save_model;  // final export (HF layout)
};

// Data-parallel steps shared by TrainLoop and PPO (no-ops in one process).
// Every rank takes rank 0's parameters, optimizer moments and step counter; returns rank 0's
// `scalars` (e.g. the step a resumed run starts at) on every rank.
std::vector<double> sync_from_main(ProcessGroup& group, const AdamW::NamedParams& params, AdamW& optimizer,
                                   std::vector<double> scalars);
// dist_bucket_mb in bytes (dist/gradient_reducer.h).
int64_t dist_bucket_bytes(const TrainConfig& c);

class TrainLoop {
 public:
  // params: the trainable parameters under stable names (saved in checkpoints).
  // config_toml: the resolved config, saved as RUN_DIR/config.toml.
  TrainLoop(const TrainConfig& cfg, AdamW::NamedParams params, std::string config_toml, size_t num_examples);

  // Runs (or, with resume, continues from RUN_DIR/checkpoint) the training to the end, or
  // stops after `stop_after` optimizer steps of this call (> 0), checkpointing there, as an
  // interrupted run would. Returns the last step's metrics.
  Metrics run(const TrainHooks& hooks, bool resume, int64_t stop_after = 0);

  int64_t total_steps() const { return total_steps_; }
  // The examples of optimizer step `step` (0-based) in the seeded order: the order is a fresh
  // permutation each epoch, a function of (seed, epoch) only, so a resumed run sees the same.
  std::vector<size_t> step_examples(int64_t step) const;

 private:
  TrainConfig cfg_;
  AdamW::NamedParams params_;
  AdamW optimizer_;
  size_t num_examples_;
  int64_t steps_per_epoch_, total_steps_;
  RunDir run_;
  ProcessGroup& group_;
};

}  // namespace rlhf
