#include "train/train_loop.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/io.h"
#include "formats/safetensors.h"
#include "train/profile.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

namespace {

std::string format_eta(double seconds) {
  const int s = static_cast<int>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

// One progress line on a terminal, redrawn in place.
void draw_progress(int64_t done, int64_t total, const Metrics& m, double elapsed) {
  const int width = 24;
  const int filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
  std::string bar(filled, '=');
  if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
  const double eta = done > 0 ? elapsed / done * (total - done) : 0.0;
  std::fprintf(stderr, "\r[%s] %lld/%lld loss %.4f lr %.2e ETA %s ", bar.c_str(), (long long)done,
               (long long)total, m.count("loss") ? m.at("loss") : 0.0, m.count("lr") ? m.at("lr") : 0.0,
               format_eta(eta).c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace

TrainLoop::TrainLoop(const TrainConfig& cfg, AdamW::NamedParams params, std::string config_toml, size_t num_examples)
    : cfg_(cfg),
      params_(params),
      optimizer_(std::move(params), AdamWOptions{cfg.adam_beta1, cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay,
                                                 cfg.adam_tf_epsilon}),
      config_toml_(std::move(config_toml)),
      num_examples_(num_examples),
      run_dir_(cfg.run_dir) {
  check(num_examples > 0, "no training examples");
  check(cfg.batch_size > 0 && cfg.grad_accum_steps > 0, "batch_size and grad_accum_steps must be positive");
  check(cfg.batch_size % cfg.grad_accum_steps == 0,
        "batch_size (" + std::to_string(cfg.batch_size) + ") must be a multiple of grad_accum_steps (" +
            std::to_string(cfg.grad_accum_steps) + ")");
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

void TrainLoop::log(const Metrics& m) const {
  std::ofstream out(run_dir_ / "metrics.jsonl", std::ios::app);
  json j = json::object();
  for (const auto& [k, v] : m) j[k] = v;
  out << j.dump() << "\n";
}

void TrainLoop::save_checkpoint(int64_t step) const {
  const fs::path dir = run_dir_ / "checkpoint", tmp = run_dir_ / "checkpoint.tmp", old = run_dir_ / "checkpoint.old";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  TensorMap model;
  for (const auto& [name, p] : params_) model[name] = p.detach();
  write_safetensors(tmp / "model.safetensors", model);
  write_safetensors(tmp / "optimizer.safetensors", optimizer_.state());
  write_file_atomic(tmp / "state.json", json{{"step", step}, {"config", config_toml_}}.dump(1));
  // Swap directories so a crash at any point leaves one complete checkpoint.
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(tmp, dir);
  fs::remove_all(old);
}

int64_t TrainLoop::load_checkpoint() {
  fs::path dir = run_dir_ / "checkpoint";
  if (!fs::exists(dir / "state.json") && fs::exists(run_dir_ / "checkpoint.old" / "state.json"))
    dir = run_dir_ / "checkpoint.old";
  if (!fs::exists(dir / "state.json")) return 0;
  auto state = json::parse(read_file(dir / "state.json"));
  auto model = read_safetensors(dir / "model.safetensors");
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, p] : params_) {
      auto it = model.find(name);
      check(it != model.end() && it->second.sizes() == p.sizes(),
            (dir / "model.safetensors").string() + ": checkpoint does not match the model (tensor " + name + ")");
      p.copy_(it->second);
    }
  }
  optimizer_.load_state(read_safetensors(dir / "optimizer.safetensors"), (dir / "optimizer.safetensors").string());
  const int64_t step = state.at("step").get<int64_t>();
  // Metrics past the checkpoint belong to the interrupted run: drop them.
  const fs::path metrics = run_dir_ / "metrics.jsonl";
  if (fs::exists(metrics)) {
    std::istringstream in(read_file(metrics));
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      auto j = json::parse(line, nullptr, false);
      if (!j.is_discarded() && j.value("step", 0.0) <= double(step)) kept += line + "\n";
    }
    write_file_atomic(metrics, kept);
  }
  return step;
}

Metrics TrainLoop::run(const TrainHooks& hooks, bool resume, int64_t stop_after) {
  torch::AutoGradMode grad_on(true);  // whatever the caller's mode, training needs gradients
  fs::create_directories(run_dir_);
  write_file_atomic(run_dir_ / "config.toml", config_toml_);
  int64_t start = 0;
  if (resume) {
    start = load_checkpoint();
  } else {
    fs::remove(run_dir_ / "metrics.jsonl");
  }
  const bool show = cfg_.progress && ::isatty(2);
  const int64_t micro = cfg_.batch_size / cfg_.grad_accum_steps;
  const auto t0 = std::chrono::steady_clock::now();
  Metrics last;
  for (int64_t step = start; step < total_steps_; ++step) {
    const auto ts = std::chrono::steady_clock::now();
    std::optional<StepProfiler> profile(std::in_place, step + 1);  // RLHF_PROFILE=N (train/profile.h)
    const auto examples = step_examples(step);
    const double count = hooks.count(examples);
    check(count > 0, "step " + std::to_string(step + 1) + ": the batch has nothing to train on");
    optimizer_.zero_grad();
    double loss_sum = 0.0;
    Metrics sums;
    for (size_t begin = 0; begin < examples.size(); begin += micro) {
      std::vector<size_t> chunk(examples.begin() + begin,
                                examples.begin() + std::min(examples.size(), begin + size_t(micro)));
      auto r = hooks.micro_step(chunk);
      (r.loss_sum / count).backward();
      loss_sum += r.loss_sum.item<double>();
      for (const auto& [k, v] : r.sums) sums[k] += v;
    }
    const double norm = grad_norm(params_);
    const double lr = lr_at(step, total_steps_, cfg_.warmup_steps, cfg_.lr, cfg_.lr_schedule);
    optimizer_.step(lr, clip_scale(norm, cfg_.max_grad_norm));
    profile.reset();

    Metrics m{{"step", double(step + 1)}, {"loss", loss_sum / count}, {"lr", lr}, {"grad_norm", norm},
              {"epoch", double(step) / double(steps_per_epoch_)}};
    for (const auto& [k, v] : sums) m[k] = v / count;
    m["time/step_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    const bool at_end = step + 1 == total_steps_;
    if (hooks.evaluate && (at_end || (cfg_.eval_every > 0 && (step + 1) % cfg_.eval_every == 0)))
      for (const auto& [k, v] : hooks.evaluate()) m["eval/" + k] = v;
    log(m);
    last = m;
    if (show)
      draw_progress(step + 1, total_steps_, m, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    const bool stop = stop_after > 0 && step + 1 - start == stop_after && !at_end;
    if (at_end || stop || (cfg_.save_every > 0 && (step + 1) % cfg_.save_every == 0)) save_checkpoint(step + 1);
    if (stop) return last;
  }
  if (hooks.save_model) hooks.save_model(run_dir_ / "model");
  return last;
}

}  // namespace rlhf
