// LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen
// projection W gains a trainable low-rank update, y = x W^T + (alpha / r) * B A dropout(x),
// with A (r, in) and B (out, r); B starts at zero, so a freshly attached adapter leaves the
// model as it was. Adapters sit on the HF-named layer projections (q_proj ... down_proj). Our
// q/k/v and gate/up are fused matrices (model/transformer.h), so the adapter of q_proj updates
// the q rows of qkv_proj only. Names, initialisation, scaling and the saved layout follow PEFT,
// so an adapter trained here opens there (formats/peft.h) and the other way round.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/tensor_map.h"

namespace rlhf {

class TransformerImpl;

struct LoraConfig {
  int64_t r = 0;          // rank; 0: no adapters
  double alpha = 16.0;    // the update is scaled by alpha / r
  double dropout = 0.0;   // on the adapter's input, in training mode only
  // HF module names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj), or
  // "all-linear": every one of them the model has (not the LM head, as in PEFT). Attached
  // adapters keep the resolved list.
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  // Modules trained whole and saved with the adapter (PEFT's modules_to_save): "score", a
  // reward or value model's head.
  std::vector<std::string> modules_to_save;
  std::string base_model;  // where the base weights come from (PEFT's base_model_name_or_path)
  double scale() const { return alpha / double(r); }
};

// "q_proj,v_proj" -> {"q_proj", "v_proj"}; Error naming an unknown module.
std::vector<std::string> parse_lora_targets(const std::string& comma_list);

// One adapter: the low-rank update of rows [offset, offset + rows) of a projection's output.
class LoraAdapterImpl : public torch::nn::Module {
 public:
  LoraAdapterImpl(int64_t in, int64_t offset, int64_t rows, const LoraConfig& c, const torch::TensorOptions& options);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., rows): scale * B A dropout(x)
  torch::Tensor delta() const;                    // (rows, in) float32: scale * B A, the update of the weight
  torch::Tensor lora_A;  // (r, in), kaiming-uniform (a = sqrt(5)) as PEFT
  torch::Tensor lora_B;  // (rows, r), zeros
  int64_t offset, rows;
  double scale, dropout;
};
TORCH_MODULE(LoraAdapter);

// While one is alive, forward passes on this thread skip every adapter: the model computes
// its base. Thread-local, so a frozen reference (the base) can run on one thread side by side
// with the policy (base + adapters) on another, over the same weights.
class LoraDisabled {
 public:
  LoraDisabled();
  ~LoraDisabled();
  LoraDisabled(const LoraDisabled&) = delete;
  LoraDisabled& operator=(const LoraDisabled&) = delete;

 private:
  bool was_disabled_;
};
bool lora_enabled();  // on this thread

// True for the parameters of adapters (their module names hold ".lora_").
bool is_lora_parameter(const std::string& name);

// Attaches adapters per `c` (r > 0) to every layer's target projections and freezes every
// other parameter but those of modules_to_save. Adapters take the weights' device and dtype.
// Error: adapters already attached, packed weights, the GPT-2 family (its fused Conv1D layout
// has no PEFT counterpart here), a target or module the model does not have.
void attach_lora(TransformerImpl& model, const LoraConfig& c);

// The adapters' tensors (and modules_to_save's) under PEFT's names
// (base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight, base_model.model.score.weight),
// sharing storage.
TensorMap lora_weights(TransformerImpl& model);
// Copies PEFT-named tensors into the attached adapters; every one must be there with its
// shape and nothing left over. Errors name `source` and the tensor.
void load_lora_weights(TransformerImpl& model, const TensorMap& weights, const std::string& source);

// The canonical weights (tensor_map.h; CPU, the model's dtype) with each adapter's update
// merged into its rows: the model the adapters make, for export; the model is left as it is.
// Tensors without an adapter are the model's own (sharing its storage on the CPU).
TensorMap merged_weights(TransformerImpl& model);

}  // namespace rlhf
