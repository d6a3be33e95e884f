// The decoder-only transformer: one module for the Llama family and the GPT-2 family,
// selected by ModelConfig. `weights()` shows the parameters under the canonical (HF Llama)
// names of tensor_map.h, the TensorMap the loaders and writers exchange; inside, q/k/v and
// gate/up are fused matrices so a layer runs two matmuls fewer.
// Dimension letters: B batch, T new tokens, S = past + new positions, C hidden,
// H query heads, H_kv key/value heads, D head dim, I MLP width, V vocabulary.
#pragma once
#include <torch/torch.h>

#include "kernels/attention_kernel.h"
#include "kernels/packed_linear.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/tensor_map.h"

namespace rlhf {

// Keys and values of past positions, preallocated for `capacity` positions.
struct KVCache {
  // Keys and values are kept transposed: scores = q @ k is a plain matmul over contiguous
  // rows (several times faster than q @ k^T at small head sizes), and our decode kernel
  // runs over positions in both.
  std::vector<torch::Tensor> k;      // per layer: (B, H_kv, D, capacity)
  std::vector<torch::Tensor> v;      // per layer: (B, H_kv, D, capacity)
  int64_t length = 0;                // positions filled (the same for every sequence)
  int64_t capacity = 0;

  static KVCache allocate(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                          torch::TensorOptions options);
  // Keeps only the rows in `index` (B') — e.g. to drop finished sequences from a batch.
  void select_rows(const torch::Tensor& index);
};

// Keys hidden from later positions of the same row: in row b, query positions from end[b]
// on do not see keys [begin[b], end[b]). This puts two completions of one prompt in one row
// (prompt, first, second; the second must not see the first) so the prompt is computed once
// (data/collate.h, collate_shared_prompt). (B) int64 each.
struct KeySkip {
  torch::Tensor begin, end;
};

// RMSNorm (weight only) or LayerNorm (weight and bias), as the config says.
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(NormType type, int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., C) -> (..., C)
 private:
  NormType type_;
  double eps_;
  torch::Tensor weight, bias;  // (C)
};
TORCH_MODULE(Norm);

// A linear layer x W^T + b (parameters "weight" (out, in) and "bias" (out), as
// torch::nn::Linear, with its initialisation) whose weight can instead be packed for
// inference (kernels/packed_linear.h). Packed, the float weight is a placeholder of its shape
// that holds no memory, and forward runs only without autograd.
class ProjectionImpl : public torch::nn::Module {
 public:
  // packed: the weight starts as the placeholder, to be given by set_packed().
  ProjectionImpl(int64_t in, int64_t out, bool bias, bool packed = false);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)
  void set_packed(PackedWeight w);  // releases the float weight's memory
  void unpack();                    // the packed weight, dequantized, becomes the float parameter again
  const PackedWeight& packed() const { return packed_; }
  // A LoRA adapter (model/lora.h) on the rows of the output that HF module `target` ("q_proj")
  // owns; registered as the submodule "lora_<target>". Forward adds it unless LoraDisabled.
  void add_lora(const std::string& target, LoraAdapter adapter);
  const std::vector<std::pair<std::string, LoraAdapter>>& lora() const { return lora_; }
  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out), or undefined
 private:
  PackedWeight packed_;  // undefined unless packed
  std::vector<std::pair<std::string, LoraAdapter>> lora_;  // by target, in the order added
};
TORCH_MODULE(Projection);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& cfg, bool packed = false);
  // x (B, T, C); cos/sin (B, T, 1, D) or undefined (learned positions); mask as built by
  // TransformerImpl::hidden_states (T = 1: additive (B|1, 1, G, S) with G = H / H_kv;
  // T > 1: bool (B|1, 1, T, S), or undefined for plain causal); windows, when their start
  // is defined, replace the mask: causal attention over each row's window by our own CPU
  // kernel (kernels/attention_kernel.h); cache: appended to when given.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, const AttentionWindows& windows, KVCache* cache, int64_t layer);
 private:
  int64_t H_, H_kv_, D_;
  // q, k and v projections fused into one (H + 2 H_kv) * D-row matrix; weights() shows
  // them under their canonical q_proj/k_proj/v_proj names.
  Projection qkv_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const ModelConfig& cfg, bool packed = false);
  torch::Tensor forward(const torch::Tensor& x);  // (B, T, C) -> (B, T, C)
 private:
  MlpType type_;
  int64_t I_;
  // SwiGLU: gate and up fused into one (2I, C) matrix ("gate_up_proj"); GELU: up (I, C).
  Projection up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& cfg, bool packed = false);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, const AttentionWindows& windows, KVCache* cache, int64_t layer);
 private:
  Norm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

// The embeddings, blocks and final norm: registered as "model" so names read model.layers.0...
class BodyImpl : public torch::nn::Module {
 public:
  explicit BodyImpl(const ModelConfig& cfg, bool packed = false);
  torch::nn::Embedding embed_tokens{nullptr};  // its weight a placeholder when embed_packed is defined
  PackedWeight embed_packed;                      // (V, C), or undefined
  torch::nn::Embedding embed_positions{nullptr};  // learned positions only
  torch::nn::ModuleList layers{nullptr};
  Norm norm{nullptr};
};
TORCH_MODULE(Body);

class TransformerImpl : public torch::nn::Module {
 public:
  // matrices: the format of the projection matrices, the token embedding and the LM head.
  // Other than F32 they are packed (kernels/packed_linear.h) and never allocated as float:
  // the model runs inference only (forward under autograd, weights() and so training and
  // saving fail with an Error) until unpack().
  explicit TransformerImpl(const ModelConfig& cfg, WeightFormat matrices = WeightFormat::F32);

  // tokens, positions: (B, T) int64 (positions undefined: past + 0..T-1). attention_mask:
  // (B, S) with 1 for real tokens and 0 for padding, S = cache length + T (undefined: all
  // real). cache: read and appended to when given. skip: keys hidden from later positions
  // (no cache then). Returns hidden states (B, T, C) after the final norm, in the model's
  // dtype.
  torch::Tensor hidden_states(const torch::Tensor& tokens, const torch::Tensor& positions = {},
                              const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr,
                              const KeySkip* skip = nullptr);
  // Logits (B, T, V) in float32.
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& positions = {},
                        const torch::Tensor& attention_mask = {}, KVCache* cache = nullptr);
  torch::Tensor logits(const torch::Tensor& hidden);  // (B, T, C) -> (B, T, V) float32
  // Sequence classification (num_labels > 0): the head read at the last real token of each
  // row (attention_mask (B, T), 1 = real; padding on either side, positions follow the
  // mask). Returns (B, num_labels) float32, the raw score before any normalization.
  torch::Tensor scores(const torch::Tensor& tokens, const torch::Tensor& attention_mask = {});
  // The head at every position (a value head): (B, T, num_labels) float32.
  torch::Tensor token_scores(const torch::Tensor& tokens, const torch::Tensor& attention_mask = {});
  // The classification head on hidden states: (..., C) -> (..., num_labels) float32.
  torch::Tensor score_head(const torch::Tensor& hidden);

  // Copies `weights` (canonical names) into the parameters, converting dtype and device.
  // Every parameter must be present with its shape and nothing may be left over; the
  // Error names `source` and the tensor. `packed`: matrices already packed (Q8_0 blocks
  // from a GGUF), by canonical name, instead of in `weights`; a packed model keeps them as
  // they are when they are in its format, else they are dequantized (and repacked).
  void load_weights(const TensorMap& weights, const std::string& source,
                    const std::map<std::string, PackedWeight>& packed = {});
  TensorMap weights();               // canonical name -> parameter (shares storage), LoRA adapters aside; Error when packed
  bool is_packed() const { return matrices_ != WeightFormat::F32; }
  WeightFormat matrix_format() const { return matrices_; }
  void unpack();  // packed matrices -> float32 parameters (dequantized); the model can train and save again
  // Bytes of the projection and LM-head matrices as held: what one decoding step reads.
  int64_t matrix_bytes() const;
  const ModelConfig& config() const { return cfg_; }
  // The LoRA adapters attached (attach_lora, model/lora.h); r = 0: none.
  const LoraConfig& lora() const { return lora_; }
  // Activation checkpointing: while gradients are on, each block keeps only its input and is
  // recomputed in the backward pass (model/checkpoint.h). Off by default.
  void set_checkpoint_activations(bool on) { checkpoint_activations_ = on; }
  torch::Device device() const;
  torch::Dtype dtype() const;

 private:
  ModelConfig cfg_;
  bool checkpoint_activations_ = false;
  WeightFormat matrices_ = WeightFormat::F32;
  LoraConfig lora_;
  friend void attach_lora(TransformerImpl& model, const LoraConfig& c);
  Body model{nullptr};
  Projection lm_head{nullptr};         // null when tied to embed_tokens or a classifier
  torch::nn::Linear score{nullptr};    // (num_labels, C) classification head, or null
};
TORCH_MODULE(Transformer);

// (B, T) int64 positions of a left-padded batch: 0 at each sequence's first real token.
torch::Tensor positions_from_mask(const torch::Tensor& attention_mask);  // (B, S) -> (B, S)
// True when every row of a (B, S) mask is ones then zeros: padding at the end only.
bool is_right_padded(const torch::Tensor& attention_mask);

}  // namespace rlhf
