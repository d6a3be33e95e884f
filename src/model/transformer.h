// The decoder-only transformer: one module for the Llama family and the GPT-2 family,
// selected by ModelConfig. Parameters carry the canonical (HF Llama) names of tensor_map.h.
// Dimension letters: B batch, T new tokens, S = past + new positions, C hidden,
// H query heads, H_kv key/value heads, D head dim, V vocabulary.
#pragma once
#include <torch/torch.h>

#include "model/config.h"
#include "model/tensor_map.h"

namespace rlhf {

// Keys and values of past positions, preallocated for `capacity` positions.
struct KVCache {
  std::vector<torch::Tensor> k, v;   // per layer: (B, H_kv, capacity, D)
  int64_t length = 0;                // positions filled (the same for every sequence)
  int64_t capacity = 0;

  static KVCache allocate(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                          torch::TensorOptions options);
  // Keeps only the rows in `index` (B') — e.g. to drop finished sequences from a batch.
  void select_rows(const torch::Tensor& index);
};

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const ModelConfig& cfg);

  // tokens, positions: (B, T) int64. attention_mask: (B, S) with 1 for real tokens and 0 for
  // padding, S = cache length + T (undefined: all real). cache: appended to when given.
  // Returns the final hidden states (B, T, C), after the last norm.
  torch::Tensor hidden_states(const torch::Tensor& tokens, const torch::Tensor& positions = {},
                              const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);
  // Logits (B, T, V) in float32.
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions = {},
                        const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);
  torch::Tensor logits(const torch::Tensor& hidden);  // (B, T, C) -> (B, T, V) float32

  // Copies `weights` (canonical names) into the parameters; every parameter must be present
  // with the right shape, and no unknown tensor may be left over. Error names `source`.
  void load_weights(const TensorMap& weights, const std::string& source);
  TensorMap weights() const;         // canonical name -> parameter (shares storage)
  const ModelConfig& config() const { return cfg_; }

 private:
  struct Layer {
    torch::nn::Module* attn_norm;    // RMSNorm or LayerNorm
    torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};
    torch::nn::Module* mlp_norm;
    torch::nn::Linear gate{nullptr}, up{nullptr}, down{nullptr};
  };
  torch::Tensor norm(torch::nn::Module* m, const torch::Tensor& x) const;

  ModelConfig cfg_;
  torch::nn::Embedding embed_tokens_{nullptr};
  torch::nn::Embedding embed_positions_{nullptr};
  std::vector<Layer> layers_;
  torch::nn::Module* final_norm_ = nullptr;
  torch::nn::Linear lm_head_{nullptr};
  torch::Tensor rope_cos_, rope_sin_;  // (T_max, D/2) float32 buffers, not parameters
};
TORCH_MODULE(Transformer);

}  // namespace rlhf
