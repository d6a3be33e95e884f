#include "train/run_dir.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/io.h"
#include "formats/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

namespace {

const char* kStateFile = "state.json";  // written last: a checkpoint folder with it is complete

// A checkpoint folder goes incomplete (marker first) before the rest of it is removed, so a
// kill in the middle never leaves a "complete" folder with files missing.
void remove_checkpoint_dir(const fs::path& d) {
  std::error_code ec;
  fs::remove(d / kStateFile, ec);
  fs::remove_all(d);
}

int64_t state_step(const fs::path& dir) {
  const fs::path file = dir / kStateFile;
  const json state = json::parse(read_file(file), nullptr, false);
  check(state.is_object() && state.contains("step") && state["step"].is_number_integer(),
        file.string() + ": not a checkpoint state (expected a JSON object with an integer \"step\")");
  return state["step"].get<int64_t>();
}

// Test hook: RLHF_TEST_CHECKPOINT_DELAY_MS=N sleeps N ms between the phases of a save, so a
// crash test's kills land inside checkpoint writes (tests/python/test_crash_resume.py).
void test_delay() {
  static const int ms = [] {
    const char* v = std::getenv("RLHF_TEST_CHECKPOINT_DELAY_MS");
    return v ? std::atoi(v) : 0;
  }();
  if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

}  // namespace

RunDir::RunDir(fs::path dir, std::string config_toml) : dir_(std::move(dir)), config_toml_(std::move(config_toml)) {}

std::optional<RunDir::Checkpoint> RunDir::start(bool resume, int64_t max_step) {
  fs::create_directories(dir_);
  write_file_atomic(dir_ / "config.toml", config_toml_);
  const fs::path current = dir_ / "checkpoint", tmp = dir_ / "checkpoint.tmp", old = dir_ / "checkpoint.old";
  const fs::path metrics = dir_ / "metrics.jsonl";
  auto start_fresh = [&] {
    for (const auto& d : {current, tmp, old}) remove_checkpoint_dir(d);
    fs::remove(metrics);
    last_saved_ = 0;
    return std::nullopt;
  };
  if (!resume) return start_fresh();

  // The newest complete checkpoint: normally checkpoint/, but a save killed mid-swap leaves the
  // newest in checkpoint.tmp/ (complete, not yet renamed) or the only one in checkpoint.old/.
  fs::path best;
  int64_t best_step = 0;
  for (const auto& d : {current, tmp, old}) {
    if (!fs::exists(d / kStateFile)) continue;
    const int64_t s = state_step(d);
    if (best.empty() || s > best_step) best = d, best_step = s;
  }
  if (best.empty()) {
    std::cerr << "resume: no checkpoint in " << dir_.string() << ": starting from step 0\n";
    return start_fresh();
  }
  const fs::path state_file = current / kStateFile;
  check(best_step >= 0 && best_step <= max_step,
        (best / kStateFile).string() + ": checkpoint step " + std::to_string(best_step) + " is outside this run's 0.." +
            std::to_string(max_step));
  // Put it back in checkpoint/ and drop the rest, so the next save starts from a clean state.
  if (best != current) {
    remove_checkpoint_dir(current);
    fs::rename(best, current);
  }
  for (const auto& d : {tmp, old}) remove_checkpoint_dir(d);
  sync_path(dir_);

  Checkpoint ck;
  ck.step = best_step;
  const json state = json::parse(read_file(state_file), nullptr, false);
  check(state.is_object(), state_file.string() + ": not valid JSON");
  ck.extra = state.value("extra", json::object());
  if (state.value("config", std::string()) != config_toml_)
    std::cerr << "resume: the config differs from the one the checkpoint was made with (" << state_file.string()
              << "); continuing with the new one\n";
  ck.model = read_safetensors(current / "model.safetensors");
  ck.optimizer = read_safetensors(current / "optimizer.safetensors");

  // Metrics past the checkpoint belong to the interrupted run (a line cut by the kill included).
  if (fs::exists(metrics)) {
    std::istringstream in(read_file(metrics));
    std::string kept;
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("step") && j["step"].is_number() && j["step"].get<double>() <= double(ck.step))
        kept += line + "\n";
    }
    write_file_atomic(metrics, kept);
  }
  last_saved_ = ck.step;
  std::cerr << "resume: continuing from step " << ck.step << " (" << current.string() << ")\n";
  return ck;
}

void RunDir::restore(const Checkpoint& ck, AdamW::NamedParams& params, AdamW& optimizer) const {
  torch::NoGradGuard no_grad;
  const std::string where = (dir_ / "checkpoint" / "model.safetensors").string();
  for (auto& [name, p] : params) {
    auto it = ck.model.find(name);
    check(it != ck.model.end() && it->second.sizes() == p.sizes(),
          where + ": checkpoint does not match the model (tensor " + name + ")");
    p.copy_(it->second);
  }
  optimizer.load_state(ck.optimizer, (dir_ / "checkpoint" / "optimizer.safetensors").string());
}

void RunDir::save(int64_t step, const AdamW::NamedParams& params, const AdamW& optimizer, const json& extra) const {
  TensorMap model;
  for (const auto& [name, p] : params) model[name] = p.detach();
  const fs::path current = dir_ / "checkpoint", tmp = dir_ / "checkpoint.tmp", old = dir_ / "checkpoint.old";
  if (fs::exists(dir_ / "metrics.jsonl")) sync_path(dir_ / "metrics.jsonl");
  remove_checkpoint_dir(tmp);
  fs::create_directories(tmp);
  write_safetensors(tmp / "model.safetensors", model);
  test_delay();
  write_safetensors(tmp / "optimizer.safetensors", optimizer.state());
  test_delay();
  write_file_atomic(tmp / kStateFile, json{{"step", step}, {"config", config_toml_}, {"extra", extra}}.dump(1));
  sync_path(tmp);
  test_delay();
  // Swap: at every moment one complete checkpoint exists (current, old or tmp).
  remove_checkpoint_dir(old);
  if (fs::exists(current)) fs::rename(current, old);
  test_delay();
  fs::rename(tmp, current);
  sync_path(dir_);
  test_delay();
  remove_checkpoint_dir(old);
  last_saved_ = step;
}

void RunDir::log(const Metrics& m) const {
  json j = json::object();
  for (const auto& [k, v] : m) j[k] = v;
  const fs::path file = dir_ / "metrics.jsonl";
  std::ofstream out(file, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
  check(out.good(), file.string() + ": cannot append the step's metrics (disk full or not writable?)");
}

ProgressLine::ProgressLine(bool enabled, int64_t total, int64_t start)
    : show_(enabled && ::isatty(2)), total_(total), start_(start), t0_(std::chrono::steady_clock::now()) {}

void ProgressLine::update(int64_t done, const std::string& figures) {
  if (!show_) return;
  const int width = 24;
  const int filled = static_cast<int>(width * done / std::max<int64_t>(total_, 1));
  std::string bar(filled, '=');
  if (filled < width) bar += '>' + std::string(width - filled - 1, ' ');
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const int64_t done_here = done - start_;
  const int eta = done_here > 0 ? static_cast<int>(elapsed / done_here * (total_ - done) + 0.5) : 0;
  std::fprintf(stderr, "\r[%s] %lld/%lld %s ETA %d:%02d:%02d ", bar.c_str(), (long long)done, (long long)total_,
               figures.c_str(), eta / 3600, (eta / 60) % 60, eta % 60);
  if (done == total_) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void check_finite(double value, const char* what, int64_t step, const RunDir& run) {
  if (std::isfinite(value)) return;
  const int64_t saved = run.last_checkpoint_step();
  throw Error("step " + std::to_string(step) + ": " + what + " is " + std::to_string(value) + "; stopped. " +
              (saved > 0 ? "The last good checkpoint is " + (run.path() / "checkpoint").string() + " (step " +
                               std::to_string(saved) + ")"
                         : "No checkpoint was written yet") +
              "; lower lr or check the data, then rerun (--resume continues from the checkpoint)");
}

}  // namespace rlhf
