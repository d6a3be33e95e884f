// Forward pass of the transformer (prefill and cached decoding share one code path).
#include "model/transformer.h"

#include <cmath>

#include "core/error.h"

namespace F = torch::nn::functional;

namespace rlhf {

namespace {

std::string shape_str(torch::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

torch::nn::Linear linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// HF's rotate_half: dims [0, D/2) pair with [D/2, D).
torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

}  // namespace

KVCache KVCache::allocate(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                          torch::TensorOptions options) {
  KVCache c;
  c.capacity = capacity;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    c.k.push_back(torch::empty({batch, cfg.num_kv_heads, capacity, cfg.head_dim}, options));
    c.v.push_back(torch::empty({batch, cfg.num_kv_heads, capacity, cfg.head_dim}, options));
  }
  return c;
}

void KVCache::select_rows(const torch::Tensor& index) {
  for (auto& t : k) t = t.index_select(0, index);
  for (auto& t : v) t = t.index_select(0, index);
}

NormImpl::NormImpl(NormType type, int64_t dim, double eps) : type_(type), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  if (type == NormType::LayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (type_ == NormType::LayerNorm)
    return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps_);
  // RMSNorm in float32 as the reference implementations do, then back to the model dtype.
  auto xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return weight * xf.to(x.scalar_type());
}

AttentionImpl::AttentionImpl(const ModelConfig& cfg)
    : H_(cfg.num_heads), H_kv_(cfg.num_kv_heads), D_(cfg.head_dim) {
  const int64_t C = cfg.hidden_size;
  q_proj = register_module("q_proj", linear(C, H_ * D_, cfg.attention_bias));
  k_proj = register_module("k_proj", linear(C, H_kv_ * D_, cfg.attention_bias));
  v_proj = register_module("v_proj", linear(C, H_kv_ * D_, cfg.attention_bias));
  o_proj = register_module("o_proj", linear(H_ * D_, C, cfg.attention_out_bias));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, const torch::Tensor& mask,
                                     KVCache* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj(x).view({B, T, H_, D_}).transpose(1, 2);     // (B, H, T, D)
  auto k = k_proj(x).view({B, T, H_kv_, D_}).transpose(1, 2);  // (B, H_kv, T, D)
  auto v = v_proj(x).view({B, T, H_kv_, D_}).transpose(1, 2);  // (B, H_kv, T, D)
  if (cos.defined()) {
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
  }
  if (cache) {
    const int64_t past = cache->length;
    check(past + T <= cache->capacity, "KV cache full: " + std::to_string(past + T) +
                                           " positions, capacity " + std::to_string(cache->capacity));
    cache->k[layer].narrow(2, past, T).copy_(k);
    cache->v[layer].narrow(2, past, T).copy_(v);
    k = cache->k[layer].narrow(2, 0, past + T);  // (B, H_kv, S, D)
    v = cache->v[layer].narrow(2, 0, past + T);
  }
  auto y = at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false,
                                            /*scale=*/std::nullopt, /*enable_gqa=*/H_kv_ != H_);
  return o_proj(y.transpose(1, 2).reshape({B, T, H_ * D_}));
}

MlpImpl::MlpImpl(const ModelConfig& cfg) : type_(cfg.mlp) {
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size;
  if (type_ == MlpType::SwiGLU) gate_proj = register_module("gate_proj", linear(C, I, cfg.mlp_bias));
  up_proj = register_module("up_proj", linear(C, I, cfg.mlp_bias));
  down_proj = register_module("down_proj", linear(I, C, cfg.mlp_bias));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  if (type_ == MlpType::SwiGLU) return down_proj(F::silu(gate_proj(x)) * up_proj(x));
  return down_proj(torch::gelu(up_proj(x), "tanh"));
}

BlockImpl::BlockImpl(const ModelConfig& cfg) {
  input_layernorm = register_module("input_layernorm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
  self_attn = register_module("self_attn", Attention(cfg));
  post_attention_layernorm =
      register_module("post_attention_layernorm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
  mlp = register_module("mlp", Mlp(cfg));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const torch::Tensor& mask,
                                 KVCache* cache, int64_t layer) {
  auto h = x + self_attn->forward(input_layernorm(x), cos, sin, mask, cache, layer);
  return h + mlp(post_attention_layernorm(h));
}

BodyImpl::BodyImpl(const ModelConfig& cfg) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(cfg.vocab_size, cfg.hidden_size));
  if (cfg.positions == PositionType::Learned)
    embed_positions = register_module(
        "embed_positions", torch::nn::Embedding(cfg.max_position_embeddings, cfg.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < cfg.num_layers; ++l) layers->push_back(Block(cfg));
  norm = register_module("norm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
}

TransformerImpl::TransformerImpl(const ModelConfig& cfg) : cfg_(cfg) {
  model = register_module("model", Body(cfg));
  if (!cfg.tie_word_embeddings) lm_head = register_module("lm_head", linear(cfg.hidden_size, cfg.vocab_size, false));
}

torch::Device TransformerImpl::device() const { return model->embed_tokens->weight.device(); }
torch::Dtype TransformerImpl::dtype() const { return model->embed_tokens->weight.scalar_type(); }

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask) {
  return (attention_mask.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
}

torch::Tensor TransformerImpl::hidden_states(const torch::Tensor& tokens, const torch::Tensor& positions_in,
                                             const torch::Tensor& attention_mask, KVCache* cache) {
  check(tokens.dim() == 2, "hidden_states: tokens must be (B, T), got " + shape_str(tokens.sizes()));
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t past = cache ? cache->length : 0, S = past + T;
  const auto dev = tokens.device();

  torch::Tensor positions = positions_in;
  if (!positions.defined())
    positions = torch::arange(past, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).expand({B, T});

  auto x = model->embed_tokens(tokens);  // (B, T, C)
  torch::Tensor cos, sin;
  if (cfg_.positions == PositionType::Learned) {
    x = x + model->embed_positions(positions);
  } else {
    // Rotary angles position * theta^(-2i/D), computed in float32 as HF does.
    auto inv_freq = torch::pow(cfg_.rope_theta, -torch::arange(0, cfg_.head_dim, 2, torch::TensorOptions().dtype(torch::kFloat32).device(dev)) / double(cfg_.head_dim));
    auto angles = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // (B, T, D/2)
    auto emb = torch::cat({angles, angles}, -1).unsqueeze(1);                // (B, 1, T, D)
    cos = emb.cos().to(x.scalar_type());
    sin = emb.sin().to(x.scalar_type());
  }

  // mask (B, 1, T, S): causal within the new tokens, padding columns off. Each query keeps at
  // least its own position so rows of padding tokens stay finite (their outputs are unused).
  auto q_pos = torch::arange(past, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(1);  // (T, 1)
  auto k_pos = torch::arange(0, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(0);     // (1, S)
  auto mask = (k_pos <= q_pos).unsqueeze(0).unsqueeze(0);  // (1, 1, T, S)
  if (attention_mask.defined()) {
    check(attention_mask.dim() == 2 && attention_mask.size(0) == B && attention_mask.size(1) == S,
          "hidden_states: attention_mask must be (B, S) = [" + std::to_string(B) + ", " + std::to_string(S) +
              "], got " + shape_str(attention_mask.sizes()));
    mask = mask & attention_mask.to(torch::kBool).view({B, 1, 1, S});
    mask = mask | (k_pos == q_pos).unsqueeze(0).unsqueeze(0);
  }

  for (int64_t l = 0; l < cfg_.num_layers; ++l)
    x = model->layers[l]->as<Block>()->forward(x, cos, sin, mask, cache, l);
  if (cache) cache->length = S;
  return model->norm(x);
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  const auto& w = lm_head ? lm_head->weight : model->embed_tokens->weight;  // (V, C)
  return torch::matmul(hidden, w.t()).to(torch::kFloat32);
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                       const torch::Tensor& attention_mask, KVCache* cache) {
  return logits(hidden_states(tokens, positions, attention_mask, cache));
}

TensorMap TransformerImpl::weights() {
  TensorMap out;
  for (const auto& p : named_parameters()) out[p.key()] = p.value();
  return out;
}

void TransformerImpl::load_weights(const TensorMap& weights, const std::string& source) {
  torch::NoGradGuard no_grad;
  auto params = named_parameters();
  for (const auto& p : params) {
    auto it = weights.find(p.key());
    check(it != weights.end(), source + ": missing tensor " + p.key());
    check(it->second.sizes() == p.value().sizes(),
          source + ": tensor " + p.key() + " has shape " + shape_str(it->second.sizes()) +
              ", expected " + shape_str(p.value().sizes()));
    p.value().copy_(it->second);
  }
  for (const auto& [name, t] : weights)
    check(params.contains(name), source + ": unexpected tensor " + name + " for this architecture");
}

}  // namespace rlhf
