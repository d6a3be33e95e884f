// Small pieces the trainers share: the held-out split, moving batches to the device, and
// exporting a trained policy.
#pragma once
#include <torch/torch.h>

#include <random>
#include <vector>

#include "data/collate.h"
#include "model/formats.h"
#include "model/model.h"
#include "train/train_loop.h"

namespace rlhf {

// Splits `items` into (train, eval): eval_data when given (read by `read`), else the last
// eval_fraction of a seeded shuffle of the training items.
template <class T, class Read>
std::pair<std::vector<T>, std::vector<T>> train_eval_split(const TrainConfig& cfg, std::vector<T> items, Read read) {
  std::vector<T> eval;
  if (!cfg.eval_data.empty()) {
    eval = read(cfg.eval_data);
  } else if (cfg.eval_fraction > 0) {
    std::mt19937_64 rng(static_cast<uint64_t>(cfg.seed) + 17);
    for (size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[rng() % i]);
    const size_t n_eval = std::min(items.size() - 1, static_cast<size_t>(items.size() * cfg.eval_fraction));
    eval.assign(items.end() - n_eval, items.end());
    items.resize(items.size() - n_eval);
  }
  return {std::move(items), std::move(eval)};
}

inline TokenBatch to_device(TokenBatch b, torch::Device d) {
  b.input_ids = b.input_ids.to(d);
  b.attention_mask = b.attention_mask.to(d);
  b.loss_mask = b.loss_mask.to(d);
  b.lengths = b.lengths.to(d);
  return b;
}

// Hidden states of a batch of prompt-sharing pairs (data/collate.h), flattened to
// (n * L, C) so SharedPromptBatch's flat indices pick rows of it.
inline torch::Tensor shared_prompt_hidden(Transformer& model, const SharedPromptBatch& b, torch::Device dev) {
  const KeySkip skip{b.skip_begin.to(dev), b.skip_end.to(dev)};
  auto h = model->hidden_states(b.input_ids.to(dev), b.positions.to(dev), b.attention_mask.to(dev), nullptr, &skip);
  return h.reshape({-1, h.size(-1)});
}

// The pad id for training batches: the tokenizer's pad, else its EOS (masked either way).
inline int32_t training_pad_id(const Tokenizer& tok) { return tok.pad_id() >= 0 ? tok.pad_id() : std::max(tok.eos_id(), 0); }

// Trainable parameters under stable (module) names, for the optimizer and checkpoints.
inline AdamW::NamedParams named_trainable(torch::nn::Module& m) {
  AdamW::NamedParams out;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

// A hash of every parameter's bytes (FNV-1a), to check that a frozen model stayed
// bit-identical through training without keeping a second copy of it.
inline uint64_t weights_fingerprint(torch::nn::Module& m) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& p : m.named_parameters()) {
    auto t = p.value().detach().to(torch::kCPU).contiguous();
    for (char c : p.key()) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

// Writes a trained model in the Hugging Face layout (CPU copies of its canonical weights).
inline void write_trained_model(const std::filesystem::path& dir, Transformer& model, const ModelConfig& config,
                                const Tokenizer* tok) {
  TensorMap w;
  for (auto& [name, t] : model->weights()) w[name] = t.detach().to(torch::kCPU);
  write_hf_dir(dir, config, w, tok);
}

}  // namespace rlhf
