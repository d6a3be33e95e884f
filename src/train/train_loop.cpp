#include "train/train_loop.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "core/error.h"
#include "dist/process_group.h"
#include "model/autocast.h"
#include "train/profile.h"

namespace rlhf {

void check_range(bool ok, const std::string& name, double value, const std::string& rule) {
  if (ok) return;
  std::ostringstream ss;
  ss << name << " must be " << rule << ", got " << value;
  throw Error(ss.str());
}

void validate(const TrainConfig& c) {
  auto finite = [](double v) { return std::isfinite(v); };
  check_range(finite(c.lr) && c.lr >= 0, "lr", c.lr, "a finite number >= 0");
  check_range(c.batch_size > 0, "batch_size", c.batch_size, "> 0");
  check_range(finite(c.dist_bucket_mb) && c.dist_bucket_mb > 0, "dist_bucket_mb", c.dist_bucket_mb, "a finite number > 0");
  check_range(c.grad_accum_steps > 0, "grad_accum_steps", c.grad_accum_steps, "> 0");
  check_range(c.epochs > 0, "epochs", c.epochs, "> 0");
  check_range(c.max_steps >= 0, "max_steps", c.max_steps, ">= 0 (0: as many as epochs give)");
  check_range(c.max_length > 0, "max_length", c.max_length, "> 0");
  check_range(c.warmup_steps >= 0, "warmup_steps", c.warmup_steps, ">= 0");
  check_range(finite(c.eval_fraction) && c.eval_fraction >= 0 && c.eval_fraction < 1, "eval_fraction", c.eval_fraction,
          "in [0, 1)");
  check_range(finite(c.weight_decay) && c.weight_decay >= 0, "weight_decay", c.weight_decay, "a finite number >= 0");
  check_range(finite(c.adam_beta1) && c.adam_beta1 >= 0 && c.adam_beta1 < 1, "adam_beta1", c.adam_beta1, "in [0, 1)");
  check_range(finite(c.adam_beta2) && c.adam_beta2 >= 0 && c.adam_beta2 < 1, "adam_beta2", c.adam_beta2, "in [0, 1)");
  check_range(finite(c.adam_eps) && c.adam_eps > 0, "adam_eps", c.adam_eps, "a finite number > 0");
  check_range(finite(c.max_grad_norm) && c.max_grad_norm >= 0, "max_grad_norm", c.max_grad_norm, ">= 0 (0: off)");
  check_range(c.eval_every >= 0, "eval_every", c.eval_every, ">= 0");
  check_range(c.save_every >= 0, "save_every", c.save_every, ">= 0");
  check(c.lr_schedule == "linear" || c.lr_schedule == "cosine" || c.lr_schedule == "constant",
        "lr_schedule must be linear, cosine or constant, got '" + c.lr_schedule + "'");
  check(c.precision == "float32" || c.precision == "bf16", "precision must be float32 or bf16, got '" + c.precision + "'");
  check(c.precision != "bf16" || c.dtype == "float32",
        "precision = bf16 needs dtype = float32 (its master weights), got dtype = '" + c.dtype + "'");
  check_range(c.lora_r >= 0, "lora_r", c.lora_r, ">= 0 (0: full fine-tuning)");
  if (c.lora_r > 0) {
    check_range(finite(c.lora_alpha) && c.lora_alpha > 0, "lora_alpha", c.lora_alpha, "a finite number > 0");
    check_range(c.lora_dropout >= 0 && c.lora_dropout < 1, "lora_dropout", c.lora_dropout, "in [0, 1)");
    parse_lora_targets(c.lora_target_modules);
    // A checkpointed block is run twice (model/checkpoint.h): a second dropout mask would
    // differentiate another function than the one that gave the loss.
    check(c.lora_dropout == 0 || !c.checkpoint_activations,
          "lora_dropout > 0 does not go with checkpoint_activations (the recomputed block would draw another "
          "dropout mask); set one of them off");
  }
}

LoraConfig lora_config(const TrainConfig& c) {
  LoraConfig out;
  out.r = c.lora_r;
  if (c.lora_r == 0) return out;
  out.alpha = c.lora_alpha;
  out.dropout = c.lora_dropout;
  out.target_modules = parse_lora_targets(c.lora_target_modules);
  std::error_code ec;
  const auto abs = std::filesystem::absolute(c.model, ec);
  out.base_model = ec ? c.model : abs.lexically_normal().string();
  return out;
}

Autocast training_autocast(const TrainConfig& c) { return Autocast(torch::Device(c.device), c.precision == "bf16"); }

TrainLoop::TrainLoop(const TrainConfig& cfg, AdamW::NamedParams params, std::string config_toml, size_t num_examples)
    : cfg_(cfg),
      params_(params),
      optimizer_(std::move(params), AdamWOptions{cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay,
                                                 cfg.adam_tf_epsilon}),
      num_examples_(num_examples),
      run_(cfg.run_dir, std::move(config_toml)),
      group_(default_process_group()) {
  validate(cfg);
  check(num_examples > 0, "no training examples");
  check(cfg.batch_size % cfg.grad_accum_steps == 0,
        "batch_size (" + std::to_string(cfg.batch_size) + ") must be a multiple of grad_accum_steps (" +
            std::to_string(cfg.grad_accum_steps) + ")");
  check(cfg.batch_size % (cfg.grad_accum_steps * group_.world()) == 0,
        "batch_size (" + std::to_string(cfg.batch_size) + ") must be a multiple of grad_accum_steps x ranks (" +
            std::to_string(cfg.grad_accum_steps) + " x " + std::to_string(group_.world()) + ")");
  steps_per_epoch_ = (static_cast<int64_t>(num_examples) + cfg.batch_size - 1) / cfg.batch_size;
  total_steps_ = cfg.max_steps > 0 ? cfg.max_steps : steps_per_epoch_ * std::max<int64_t>(cfg.epochs, 1);
}

std::vector<size_t> TrainLoop::step_examples(int64_t step) const {
  const int64_t epoch = step / steps_per_epoch_, in_epoch = step % steps_per_epoch_;
  std::vector<size_t> order(num_examples_);
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(static_cast<uint64_t>(cfg_.seed) * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
  // Fisher-Yates by hand: std::shuffle's algorithm differs between standard libraries.
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  const size_t begin = in_epoch * cfg_.batch_size, end = std::min(num_examples_, begin + size_t(cfg_.batch_size));
  return {order.begin() + begin, order.begin() + end};
}

int64_t dist_bucket_bytes(const TrainConfig& c) { return static_cast<int64_t>(c.dist_bucket_mb * (1 << 20)); }

std::vector<double> sync_from_main(ProcessGroup& group, const AdamW::NamedParams& params, AdamW& optimizer,
                                   std::vector<double> scalars) {
  if (group.world() == 1) return scalars;
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> weights;
  for (const auto& [name, p] : params) weights.push_back(p);
  group.broadcast(weights);
  auto state = optimizer.state();
  std::vector<torch::Tensor> moments;
  for (const auto& [name, t] : state)
    if (name != "step") moments.push_back(t);
  group.broadcast(moments);
  // Scalars travel as a sum in which only rank 0's count.
  scalars.push_back(double(optimizer.steps()));
  if (!group.is_main()) std::fill(scalars.begin(), scalars.end(), 0.0);
  scalars = group.allreduce_sum(scalars);
  state["step"] = torch::tensor(static_cast<int64_t>(scalars.back()), torch::kInt64);
  optimizer.load_state(state, "rank 0");
  scalars.pop_back();
  return scalars;
}

Metrics TrainLoop::run(const TrainHooks& hooks, bool resume, int64_t stop_after) {
  torch::AutoGradMode grad_on(true);  // whatever the caller's mode, training needs gradients
  const bool main_rank = group_.is_main(), parallel = group_.world() > 1;
  int64_t start = 0;
  if (main_rank) {
    if (auto ck = run_.start(resume, total_steps_)) {
      run_.restore(*ck, params_, optimizer_);
      start = ck->step;
    }
  }
  if (parallel) start = static_cast<int64_t>(sync_from_main(group_, params_, optimizer_, {double(start)})[0]);
  std::vector<torch::Tensor> trainable;
  for (const auto& [name, p] : params_) trainable.push_back(p);
  GradientReducer reducer(group_, trainable, dist_bucket_bytes(cfg_));
  ProgressLine progress(cfg_.progress && main_rank, total_steps_, start);
  const int64_t share = cfg_.batch_size / group_.world(), micro = share / cfg_.grad_accum_steps;
  Metrics last;
  for (int64_t step = start; step < total_steps_; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    std::optional<StepProfiler> profile(std::in_place, step + 1);  // RLHF_PROFILE=N (train/profile.h)
    // Randomness in the step (LoRA's dropout) is a function of (seed, step, rank), as the data
    // order is: a resumed run draws what an uninterrupted one would.
    torch::manual_seed(static_cast<uint64_t>(cfg_.seed) * 1000003ull + static_cast<uint64_t>(step * group_.world() + group_.rank()));
    const auto batch = step_examples(step);
    const double count = hooks.count(batch);  // of the whole batch, on every rank
    check(count > 0, "step " + std::to_string(step + 1) + ": the batch has nothing to train on");
    // This rank's share (a last, short batch of an epoch may leave a rank nothing).
    const size_t first = std::min(batch.size(), size_t(group_.rank() * share));
    const std::vector<size_t> examples(batch.begin() + first, batch.begin() + std::min(batch.size(), first + share));
    optimizer_.zero_grad();
    double loss_sum = 0.0;
    Metrics sums;
    for (size_t begin = 0; begin < examples.size(); begin += micro) {
      std::vector<size_t> chunk(examples.begin() + begin,
                                examples.begin() + std::min(examples.size(), begin + size_t(micro)));
      MicroStep r;
      {
        const auto autocast = training_autocast(cfg_);  // the forward pass only, as with torch.autocast
        r = hooks.micro_step(chunk);
      }
      if (begin + micro >= examples.size()) reducer.arm();  // the step's last backward pass sends the gradients
      (r.loss_sum / count).backward();
      loss_sum += r.loss_sum.item<double>();
      for (const auto& [k, v] : r.sums) sums[k] += v;
    }
    if (parallel) {
      std::vector<double> figures{loss_sum};
      for (const auto& [k, v] : sums) figures.push_back(v);
      reducer.finish(figures);
      loss_sum = figures[0];
      size_t i = 1;
      for (auto& [k, v] : sums) v = figures[i++];
    }
    check_finite(loss_sum, "the loss", step + 1, run_);
    const double norm = grad_norm(params_);
    check_finite(norm, "the gradient norm", step + 1, run_);
    const double lr = lr_at(step, total_steps_, cfg_.warmup_steps, cfg_.lr, cfg_.lr_schedule);
    optimizer_.step(lr, clip_scale(norm, cfg_.max_grad_norm));
    profile.reset();

    Metrics m{{"step", double(step + 1)}, {"loss", loss_sum / count}, {"lr", lr}, {"grad_norm", norm},
              {"epoch", double(step) / double(steps_per_epoch_)}};
    for (const auto& [k, v] : sums) m[k] = v / count;
    m["time/step_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    const bool at_end = step + 1 == total_steps_;
    if (main_rank && hooks.evaluate && (at_end || (cfg_.eval_every > 0 && (step + 1) % cfg_.eval_every == 0))) {
      const auto autocast = training_autocast(cfg_);
      for (const auto& [k, v] : hooks.evaluate()) m["eval/" + k] = v;
    }
    if (main_rank) run_.log(m);
    last = m;
    char figures[64];
    std::snprintf(figures, sizeof(figures), "loss %.4f lr %.2e", m["loss"], lr);
    progress.update(step + 1, figures);
    const bool stop = stop_after > 0 && step + 1 - start == stop_after && !at_end;
    if (main_rank && (at_end || stop || (cfg_.save_every > 0 && (step + 1) % cfg_.save_every == 0)))
      run_.save(step + 1, params_, optimizer_);
    if (stop) return last;
  }
  if (main_rank && hooks.save_model) hooks.save_model(run_.model_dir());
  group_.barrier();  // the model is on disk before any rank reports the run done
  return last;
}

}  // namespace rlhf
