// ModelConfig: the shape of a decoder-only transformer, covering the Llama family (RMSNorm,
// rotary positions, SwiGLU, grouped-query attention) and the GPT-2 family (LayerNorm,
// learned positions, GELU, biases). Read from / written to Hugging Face config.json.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf {

enum class NormType { RMSNorm, LayerNorm };
enum class MlpType { SwiGLU, GELU };          // GELU = tanh approximation ("gelu_new")
enum class PositionType { Rotary, Learned };

struct ModelConfig {
  // Hugging Face class name this config round-trips to: LlamaForCausalLM,
  // MistralForCausalLM, Qwen2ForCausalLM or GPT2LMHeadModel.
  std::string architecture = "LlamaForCausalLM";
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;        // C
  int64_t num_layers = 32;           // L
  int64_t num_heads = 32;            // H (query heads)
  int64_t num_kv_heads = 32;         // H_kv; H % H_kv == 0 (grouped-query attention)
  int64_t head_dim = 128;            // D; usually C / H
  int64_t intermediate_size = 11008; // MLP hidden width
  int64_t max_position_embeddings = 2048;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  NormType norm = NormType::RMSNorm;
  MlpType mlp = MlpType::SwiGLU;
  PositionType positions = PositionType::Rotary;
  bool attention_bias = false;       // biases on q/k/v projections (Qwen2, GPT-2)
  bool attention_out_bias = false;   // bias on the output projection (GPT-2)
  bool mlp_bias = false;             // biases in the MLP (GPT-2)
  bool tie_word_embeddings = false;  // lm_head shares embed_tokens' matrix
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};
  int64_t pad_token_id = -1;         // -1: none declared by the model
  int64_t sliding_window = 0;        // informational (Mistral); 0 = none
  // Sequence classification (a reward model): num_labels > 0 replaces lm_head by a
  // `score.weight` (num_labels, C) head read at the last real token, and the class becomes
  // <Family>ForSequenceClassification in config.json. The reward is gain * score + bias
  // (normalization fitted after training; stored as rlhf_reward_gain/bias).
  int64_t num_labels = 0;
  double reward_gain = 1.0, reward_bias = 0.0;

  // Throws rlhf::Error naming `source` and the field when a value is missing or inconsistent.
  static ModelConfig from_hf_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_hf_json() const;
  void validate(const std::string& source) const;
  int64_t num_parameters() const;    // exact count of the module's parameters
};

// Every tensor a model with this config has: canonical name (tensor_map.h) -> shape. The one
// list that validate_weights() and num_parameters() both read.
using TensorShapes = std::map<std::string, std::vector<int64_t>>;
TensorShapes canonical_shapes(const ModelConfig& cfg);

}  // namespace rlhf
