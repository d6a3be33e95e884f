// Small pieces the trainers share: the held-out split (by prompt for preference pairs), moving batches to the device, and
// exporting a trained policy.
#pragma once
#include <torch/torch.h>

#include <map>
#include <random>
#include <vector>

#include "data/collate.h"
#include "data/datasets.h"
#include "formats/formats.h"
#include "formats/peft.h"
#include "model/lora.h"
#include "model/model.h"
#include "train/train_loop.h"

namespace rlhf {

// Splits `items` into (train, eval): eval_data when given (read by `read`), else whole groups
// of a seeded shuffle: items whose `group_of` keys are equal land on the same side, and groups
// are held out from the end of the shuffle until eval_fraction of the items is. Preference
// pairs are grouped by prompt, so a held-out pair's prompt (and the completions it shares with
// its ranking's other pairs) is never trained on; with one group per item this is a plain
// seeded shuffle of the items.
template <class T, class Read, class GroupOf>
std::pair<std::vector<T>, std::vector<T>> train_eval_split(const TrainConfig& cfg, std::vector<T> items, Read read,
                                                           GroupOf group_of) {
  if (!cfg.eval_data.empty()) return {std::move(items), read(cfg.eval_data)};
  if (cfg.eval_fraction <= 0 || items.size() < 2) return {std::move(items), {}};
  std::map<std::decay_t<decltype(group_of(items[0], size_t{0}))>, size_t> group_index;
  std::vector<std::vector<size_t>> groups;  // item indices, groups in order of first appearance
  for (size_t i = 0; i < items.size(); ++i) {
    auto [it, fresh] = group_index.try_emplace(group_of(items[i], i), groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].push_back(i);
  }
  std::mt19937_64 rng(static_cast<uint64_t>(cfg.seed) + 17);
  for (size_t i = groups.size(); i > 1; --i) std::swap(groups[i - 1], groups[rng() % i]);
  const size_t target = static_cast<size_t>(items.size() * cfg.eval_fraction);
  std::vector<bool> held_out(items.size(), false);
  size_t n_eval = 0;
  for (size_t g = groups.size(); g > 1 && n_eval < target; --g) {  // the first group always trains
    for (size_t i : groups[g - 1]) held_out[i] = true;
    n_eval += groups[g - 1].size();
  }
  std::vector<T> train, eval;
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t i : groups[g]) (held_out[i] ? eval : train).push_back(std::move(items[i]));
  return {std::move(train), std::move(eval)};
}

// Each item its own group (SFT examples).
template <class T, class Read>
std::pair<std::vector<T>, std::vector<T>> train_eval_split(const TrainConfig& cfg, std::vector<T> items, Read read) {
  return train_eval_split(cfg, std::move(items), read, [](const T&, size_t i) { return i; });
}

// The split key of preference pairs: the prompt.
inline const std::string& pair_prompt(const PreferencePair& p, size_t) { return p.prompt; }

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

// LoRA per the shared fields (nothing when lora_r = 0): adapters on `model`, everything else
// frozen but `modules_to_save` (a reward or value model's "score" head).
inline void apply_lora(Transformer& model, const TrainConfig& tc, std::vector<std::string> modules_to_save = {}) {
  if (tc.lora_r == 0) return;
  auto c = lora_config(tc);
  c.modules_to_save = std::move(modules_to_save);
  attach_lora(*model, c);
}

// A hash of every parameter's bytes (FNV-1a) but LoRA adapters' (the base weights), to check
// that a frozen model stayed bit-identical through training without keeping a second copy of it.
inline uint64_t weights_fingerprint(torch::nn::Module& m) {
  uint64_t h = 1469598103934665603ull;
  for (const auto& p : m.named_parameters()) {
    if (is_lora_parameter(p.key())) continue;
    auto t = p.value().detach().to(torch::kCPU).contiguous();
    for (char c : p.key()) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

// Writes a trained model in the Hugging Face layout (CPU copies of its canonical weights).
// With LoRA adapters: the model with them merged, and the adapter in PEFT's layout in
// adapter/ beside `dir` (train/run_dir.h), for peft or `rlhf lora merge` on another base.
inline void write_trained_model(const std::filesystem::path& dir, Transformer& model, const ModelConfig& config,
                                const Tokenizer* tok) {
  write_hf_dir(dir, config, merged_weights(*model), tok);
  if (model->lora().r > 0)
    write_peft_adapter(RunDir::adapter_dir_beside(dir),
                       {model->lora(), config.num_labels > 0 ? "SEQ_CLS" : "CAUSAL_LM", lora_weights(*model)});
}

}  // namespace rlhf
