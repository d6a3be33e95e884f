// Forward pass of the transformer (prefill and cached decoding share one code path).
#include "model/transformer.h"

#include "kernels/attention_kernel.h"
#include "kernels/cpu_kernels.h"
#include "model/autocast.h"
#include "model/checkpoint.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>

#include "core/error.h"

namespace F = torch::nn::functional;

namespace rlhf {

namespace {

std::string shape_str(torch::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A float parameter of `shape` that holds no memory (every element the same zero): what a
// packed matrix leaves in its parameter's place, so names and shapes stay as they were.
torch::Tensor placeholder(torch::IntArrayRef shape) {
  auto t = torch::empty_strided(shape, std::vector<int64_t>(shape.size(), 0));
  std::memset(t.data_ptr(), 0, sizeof(float));
  return t;
}

// The canonical names (tensor_map.h) of the rows of a projection's fused weight, in order.
std::vector<std::string> canonical_parts(const std::string& module) {
  auto prefix = [&](const std::string& fused) { return module.substr(0, module.size() - fused.size()); };
  auto ends_with = [&](const std::string& s) { return module.size() >= s.size() && module.ends_with(s); };
  if (ends_with("qkv_proj"))
    return {prefix("qkv_proj") + "q_proj.weight", prefix("qkv_proj") + "k_proj.weight",
            prefix("qkv_proj") + "v_proj.weight"};
  if (ends_with("gate_up_proj")) return {prefix("gate_up_proj") + "gate_proj.weight", prefix("gate_up_proj") + "up_proj.weight"};
  return {module + ".weight"};
}

// Packed weights refuse autograd: their float values are not parameters, so training would
// silently leave them unchanged.
void check_inference(const PackedWeight& w, const torch::Tensor& x) {
  check(!(torch::GradMode::is_enabled() && x.requires_grad()),
        std::string("this model's weights are packed (") + weight_format_name(w.format) +
            ") for inference only; load it with --weights f32 (float32) to train it");
}

// HF's rotate_half: dims [0, D/2) pair with [D/2, D).
torch::Tensor rotate_half(const torch::Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}

// Inference on float32 weights with 2 to kFloatLinearOwnRows rows (sequences decoded
// together) runs our kernels too (packed_linear with the weight as an F32 PackedWeight, no
// copy): they stream the weight once for all rows and keep 4 x 6 blocks of products in
// registers; measured faster than MKL there (bench/bench_linear.cpp). At one row MKL's sgemv
// was as fast or faster, so it keeps those, and prefill's many rows. RLHF_GEMV=mkl in the
// environment keeps ATen's linear always, RLHF_GEMV=own takes ours from one row on (to compare).
bool own_kernel_applies(const torch::Tensor& x, const torch::Tensor& w) {
  static const int mode = [] {  // 0: 2 to kFloatLinearOwnRows rows, 1: never, 2: from 1 row
    const char* e = std::getenv("RLHF_GEMV");
    return !e ? 0 : std::strcmp(e, "mkl") == 0 ? 1 : std::strcmp(e, "own") == 0 ? 2 : 0;
  }();
  // Under autocast ATen's linear runs in bf16: ours would compute another function (and a
  // checkpointed block's no-grad forward would not match its recomputation).
  if (mode == 1 || torch::GradMode::is_enabled() || at::autocast::is_autocast_enabled(at::kCPU) || x.dim() == 0 ||
      x.size(-1) == 0)
    return false;
  const int64_t rows = x.numel() / x.size(-1);
  return rows >= (mode == 2 ? 1 : 2) && rows <= kFloatLinearOwnRows && x.device().is_cpu() &&
         x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32 && w.device().is_cpu() &&
         w.is_contiguous() && w.dim() == 2;
}

PackedWeight float_view(const torch::Tensor& w) { return {WeightFormat::F32, w.size(0), w.size(1), w}; }

}  // namespace

KVCache KVCache::allocate(const ModelConfig& cfg, int64_t batch, int64_t capacity,
                          torch::TensorOptions options) {
  KVCache c;
  c.capacity = capacity;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    c.k.push_back(torch::empty({batch, cfg.num_kv_heads, cfg.head_dim, capacity}, options));
    c.v.push_back(torch::empty({batch, cfg.num_kv_heads, cfg.head_dim, capacity}, options));
  }
  return c;
}

void KVCache::select_rows(const torch::Tensor& index) {
  for (auto& t : k) t = t.index_select(0, index);
  for (auto& t : v) t = t.index_select(0, index);
}

ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool has_bias, bool packed) {
  // torch::nn::Linear's parameters and initialisation, in its order: weight
  // kaiming_uniform(a = sqrt(5)), bias U(-1/sqrt(in), 1/sqrt(in)).
  weight = register_parameter("weight", packed ? placeholder({out, in}) : torch::empty({out, in}));
  if (has_bias) bias = register_parameter("bias", torch::empty({out}));
  torch::NoGradGuard no_grad;
  if (!packed) torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (has_bias) bias.uniform_(-1.0 / std::sqrt(double(in)), 1.0 / std::sqrt(double(in)));
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  torch::Tensor y;
  if (packed_.defined()) {
    check_inference(packed_, x);
    y = packed_linear(x, packed_, bias);
  } else if (own_kernel_applies(x, weight)) {
    y = packed_linear(x, float_view(weight), bias);
  } else {
    y = F::linear(x, weight, bias);
  }
  if (lora_.empty() || !lora_enabled()) return y;
  // Each adapter adds to its rows in place: the base product's backward needs x and W, not y.
  for (auto& [target, adapter] : lora_) y.narrow(-1, adapter->offset, adapter->rows).add_(adapter(x));
  return y;
}

void ProjectionImpl::add_lora(const std::string& target, LoraAdapter adapter) {
  check(adapter->offset >= 0 && adapter->offset + adapter->rows <= weight.size(0),
        "add_lora: rows [" + std::to_string(adapter->offset) + ", " + std::to_string(adapter->offset + adapter->rows) +
            ") outside a " + shape_str(weight.sizes()) + " projection");
  adapter->train(is_training());  // a new module starts in training mode, whatever the model's
  lora_.emplace_back(target, register_module("lora_" + target, adapter));
}

void ProjectionImpl::set_packed(PackedWeight w) {
  check(w.rows == weight.size(0) && w.cols == weight.size(1),
        "set_packed: a (" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + ") packed weight for a " +
            shape_str(weight.sizes()) + " projection");
  packed_ = std::move(w);
  weight.set_data(placeholder(weight.sizes()));
}

void ProjectionImpl::unpack() {
  if (!packed_.defined()) return;
  weight.set_data(dequantize(packed_));
  packed_ = {};
}

NormImpl::NormImpl(NormType type, int64_t dim, double eps) : type_(type), eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  if (type == NormType::LayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (type_ == NormType::LayerNorm) return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps_);
  if (fused_cpu_kernels_apply(x)) return fused_rms_norm(x, weight, eps_);  // one pass each way (kernels/cpu_kernels.h)
  return torch::rms_norm(x, {x.size(-1)}, weight, eps_);  // computed in float32, as HF does
}

AttentionImpl::AttentionImpl(const ModelConfig& cfg, bool packed)
    : H_(cfg.num_heads), H_kv_(cfg.num_kv_heads), D_(cfg.head_dim) {
  const int64_t C = cfg.hidden_size;
  qkv_proj = register_module("qkv_proj", Projection(C, (H_ + 2 * H_kv_) * D_, cfg.attention_bias, packed));
  o_proj = register_module("o_proj", Projection(H_ * D_, C, cfg.attention_out_bias, packed));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, const torch::Tensor& mask,
                                     const AttentionWindows& windows, KVCache* cache, int64_t layer) {
  const int64_t B = x.size(0), T = x.size(1), G = H_ / H_kv_;
  const torch::Tensor& window_start = windows.start;
  auto qkv = qkv_proj(x).view({B, T, H_ + 2 * H_kv_, D_});
  // Our CPU kernel takes the fused projection whole and rotates inside: no slices, no rotary
  // ops, one gradient tensor back (kernels/attention_kernel.h).
  if (window_start.defined() && cache && cache->length > 0)  // decoding: cache write, rotary and attention in one
    return o_proj(decode_step_cpu(qkv, H_, H_kv_, cos, sin, cache->k[layer], cache->v[layer], cache->length, window_start)
                      .view({B, T, H_ * D_}));
  torch::Tensor fused;
  if (window_start.defined() && (!cache || cache->length == 0)) {
    fused = causal_attention_cpu(qkv, H_, H_kv_, cos, sin, windows);  // (B, T, H, D)
    if (!cache) return o_proj(fused.view({B, T, H_ * D_}));
  }
  // Rotary positions on the query and key heads together (one set of ops, not two).
  auto qk = qkv.narrow(2, 0, H_ + H_kv_);  // (B, T, H + H_kv, D)
  if (cos.defined()) qk = qk * cos + rotate_half(qk) * sin;
  auto q = qk.narrow(2, 0, H_);                  // (B, T, H, D)
  auto k = qk.narrow(2, H_, H_kv_);              // (B, T, H_kv, D)
  auto v = qkv.narrow(2, H_ + H_kv_, H_kv_);     // (B, T, H_kv, D)
  torch::Tensor k_t = k.permute({0, 2, 3, 1});   // (B, H_kv, D, S): keys are stored transposed
  torch::Tensor v_s = v.transpose(1, 2);         // (B, H_kv, S, D)
  if (cache) {
    const int64_t past = cache->length;
    check(past + T <= cache->capacity, "KV cache full: " + std::to_string(past + T) +
                                           " positions, capacity " + std::to_string(cache->capacity));
    cache->k[layer].narrow(3, past, T).copy_(k_t);
    cache->v[layer].narrow(3, past, T).copy_(v.permute({0, 2, 3, 1}));
    k_t = cache->k[layer].narrow(3, 0, past + T);
    v_s = cache->v[layer].narrow(3, 0, past + T).transpose(-1, -2);  // (B, H_kv, S, D) view
  }
  if (fused.defined()) return o_proj(fused.view({B, T, H_ * D_}));  // prefill: the cache is filled above
  torch::Tensor y;  // (B, H, T, D)
  if (T == 1) {
    // Decoding: grouped-query attention without copying K/V per query head: the G = H / H_kv
    // query heads that share a K/V head are a (B, H_kv, G, D) view. Plain matmuls: for one
    // query row at small head sizes they beat the fused CPU attention kernel several times.
    auto q_g = q.reshape({B, H_kv_, G, D_});
    auto scores = torch::matmul(q_g, k_t);  // (B, H_kv, G, S)
    scores.mul_(1.0 / std::sqrt(double(D_))).add_(mask);
    y = torch::matmul(torch::softmax(scores, -1), v_s).view({B, H_, T, D_});
  } else {
    // Prefill and training: the fused kernel (flash attention on the CPU), causal by itself
    // when there is no padding and no past, else with the boolean mask.
    const auto attn_mask = mask.defined() ? std::optional<torch::Tensor>(mask) : std::nullopt;
    y = at::scaled_dot_product_attention(q.transpose(1, 2), k_t.transpose(-1, -2), v_s, attn_mask, /*dropout_p=*/0.0,
                                         /*is_causal=*/!mask.defined(), /*scale=*/std::nullopt,
                                         /*enable_gqa=*/H_kv_ != H_);
  }
  return o_proj(y.transpose(1, 2).reshape({B, T, H_ * D_}));
}

MlpImpl::MlpImpl(const ModelConfig& cfg, bool packed) : type_(cfg.mlp), I_(cfg.intermediate_size) {
  const int64_t C = cfg.hidden_size;
  up_proj = register_module(type_ == MlpType::SwiGLU ? "gate_up_proj" : "up_proj",
                            Projection(C, (type_ == MlpType::SwiGLU ? 2 : 1) * I_, cfg.mlp_bias, packed));
  down_proj = register_module("down_proj", Projection(I_, C, cfg.mlp_bias, packed));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  auto h = up_proj(x);
  if (type_ == MlpType::SwiGLU) {
    if (fused_cpu_kernels_apply(h)) return down_proj(fused_swiglu(h));
    const auto gate_up = h.split(I_, -1);  // split: its backward is one cat, not two zero-filled slices
    return down_proj(F::silu(gate_up[0]) * gate_up[1]);
  }
  return down_proj(torch::gelu(h, "tanh"));
}

BlockImpl::BlockImpl(const ModelConfig& cfg, bool packed) {
  input_layernorm = register_module("input_layernorm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
  self_attn = register_module("self_attn", Attention(cfg, packed));
  post_attention_layernorm =
      register_module("post_attention_layernorm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
  mlp = register_module("mlp", Mlp(cfg, packed));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const torch::Tensor& mask,
                                 const AttentionWindows& windows, KVCache* cache, int64_t layer) {
  auto h = x + self_attn->forward(input_layernorm(x), cos, sin, mask, windows, cache, layer);
  return h + mlp(post_attention_layernorm(h));
}

BodyImpl::BodyImpl(const ModelConfig& cfg, bool packed) {
  auto embed = torch::nn::EmbeddingOptions(cfg.vocab_size, cfg.hidden_size);
  if (packed) embed._weight(placeholder({cfg.vocab_size, cfg.hidden_size}));  // never allocated as float
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(embed));
  if (cfg.positions == PositionType::Learned)
    embed_positions = register_module(
        "embed_positions", torch::nn::Embedding(cfg.max_position_embeddings, cfg.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < cfg.num_layers; ++l) layers->push_back(Block(cfg, packed));
  norm = register_module("norm", Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps));
}

TransformerImpl::TransformerImpl(const ModelConfig& cfg, WeightFormat matrices) : cfg_(cfg), matrices_(matrices) {
  const bool packed = matrices != WeightFormat::F32;
  model = register_module("model", Body(cfg, packed));
  if (cfg.num_labels > 0) {
    score = register_module("score", torch::nn::Linear(torch::nn::LinearOptions(cfg.hidden_size, cfg.num_labels).bias(false)));
    // Reward head init N(0, 1/sqrt(C + 1)) (as lm-human-preferences initialises its reward head).
    torch::NoGradGuard no_grad;
    score->weight.normal_(0.0, 1.0 / std::sqrt(double(cfg.hidden_size + 1)));
  } else if (!cfg.tie_word_embeddings) {
    lm_head = register_module("lm_head", Projection(cfg.hidden_size, cfg.vocab_size, false, packed));
  }
}

torch::Device TransformerImpl::device() const { return model->embed_tokens->weight.device(); }
torch::Dtype TransformerImpl::dtype() const { return model->embed_tokens->weight.scalar_type(); }

// Each row is ones then zeros (padding only at the end).
bool is_right_padded(const torch::Tensor& attention_mask) {
  auto m = attention_mask.to(torch::kLong);
  return torch::equal(m.cumprod(1), m);
}

// The window of each row when every row's ones form one run: its first real position and
// the one after its last (else start undefined). Without a mask: all of [0, T).
AttentionWindows row_windows(const torch::Tensor& attention_mask, int64_t B) {
  if (!attention_mask.defined()) return {torch::zeros({B}, torch::kLong), {}};
  auto m = attention_mask.to(torch::kCPU, torch::kLong);
  auto count = m.sum(1, /*keepdim=*/true), first = m.argmax(1, /*keepdim=*/true);
  auto j = torch::arange(m.size(1), torch::kLong).unsqueeze(0);
  auto run = ((j >= first) & (j < first + count)).to(torch::kLong);
  if (!torch::equal(run, m)) return {};
  return {first.squeeze(1).contiguous(), (first + count).squeeze(1).contiguous()};
}

torch::Tensor positions_from_mask(const torch::Tensor& attention_mask) {
  return (attention_mask.to(torch::kLong).cumsum(1) - 1).clamp_min(0);
}

torch::Tensor TransformerImpl::hidden_states(const torch::Tensor& tokens, const torch::Tensor& positions_in,
                                             const torch::Tensor& attention_mask, KVCache* cache, const KeySkip* skip) {
  check(tokens.dim() == 2, "hidden_states: tokens must be (B, T), got " + shape_str(tokens.sizes()));
  check(!skip || !cache, "hidden_states: keys can be skipped only without a KV cache");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t past = cache ? cache->length : 0, S = past + T;
  const auto dev = tokens.device();

  torch::Tensor positions = positions_in;
  if (!positions.defined())
    positions = torch::arange(past, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).expand({B, T});

  auto x = model->embed_packed.defined() ? dequantize_rows(model->embed_packed, tokens)  // (B, T, C)
                                         : model->embed_tokens(tokens);
  torch::Tensor cos, sin;
  if (cfg_.positions == PositionType::Learned) {
    x = x + model->embed_positions(positions);
  } else {
    // Rotary angles position * theta^(-2i/D), computed in float32 as HF does.
    auto inv_freq = torch::pow(cfg_.rope_theta, -torch::arange(0, cfg_.head_dim, 2, torch::TensorOptions().dtype(torch::kFloat32).device(dev)) / double(cfg_.head_dim));
    auto angles = positions.to(torch::kFloat32).unsqueeze(-1) * inv_freq;  // (B, T, D/2)
    auto emb = torch::cat({angles, angles}, -1).unsqueeze(2);                // (B, T, 1, D)
    cos = emb.cos().to(x.scalar_type());
    sin = emb.sin().to(x.scalar_type());
  }

  // The attention mask, built once for all layers: causal within the new tokens, padding
  // columns off. Each query keeps at least its own position so rows of padding tokens stay
  // finite (their outputs are unused). Decoding (T = 1) takes it additive (0 / -inf) for the
  // G query heads of each K/V head, (B or 1, 1, G, S); longer inputs take it boolean,
  // (B or 1, 1, T, S), or not at all when plain causal attention is exact (no padding, no past).
  if (attention_mask.defined())
    check(attention_mask.dim() == 2 && attention_mask.size(0) == B && attention_mask.size(1) == S,
          "hidden_states: attention_mask must be (B, S) = [" + std::to_string(B) + ", " + std::to_string(S) +
              "], got " + shape_str(attention_mask.sizes()));
  auto allowed = [&] {  // (B or 1, T, S) bool; built only on the paths that take a mask
    auto q_pos = torch::arange(past, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(1);  // (T, 1)
    auto k_pos = torch::arange(0, S, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(0);     // (1, S)
    auto a = (k_pos <= q_pos).unsqueeze(0);  // (1, T, S)
    if (attention_mask.defined())
      a = (a & attention_mask.to(torch::kBool).view({B, 1, S})) | (k_pos == q_pos).unsqueeze(0);
    if (skip) {  // rows from skip end on lose the skipped keys
      auto sb = skip->begin.to(dev, torch::kLong).view({B, 1, 1}), se = skip->end.to(dev, torch::kLong).view({B, 1, 1});
      a = a & ~((q_pos.unsqueeze(0) >= se) & (k_pos.unsqueeze(0) >= sb) & (k_pos.unsqueeze(0) < se));
    }
    return a;
  };
  // Our CPU kernel when each row's real tokens are one run (right, left or no padding):
  // causal attention over [first real token, i], with a skipped span when given. Real rows
  // see exactly what the mask gives them; rows of right padding attend to nothing (output 0,
  // no work; the mask path gives them something else), and their outputs are unused.
  // Decoding (one new token per row, no gradients) takes the same window from the cache,
  // through its own kernel, which also takes larger heads (kernels/attention_kernel.h).
  const bool prefill = T > 1 && past == 0, decode = T == 1 && past > 0 && cache && !torch::GradMode::is_enabled();
  AttentionWindows windows;
  if ((prefill && causal_attention_cpu_applies(x, cfg_.head_dim)) || (decode && decode_step_cpu_applies(x, cfg_.head_dim)))
    windows = row_windows(attention_mask, B);
  if (decode) windows.end = torch::Tensor();  // the window ends at the new token
  if (skip && windows.start.defined()) windows.skip_begin = skip->begin, windows.skip_end = skip->end;
  torch::Tensor mask;
  if (windows.start.defined()) {
    // no mask: the window is the mask
  } else if (T == 1) {
    const auto a = allowed();
    const int64_t G = cfg_.num_heads / cfg_.num_kv_heads, Bm = a.size(0);
    mask = torch::zeros({Bm, 1, S}, x.options())
               .masked_fill_(a.logical_not(), -std::numeric_limits<float>::infinity())
               .unsqueeze(1).expand({Bm, 1, G, S}).contiguous();  // a dense operand keeps add_ on its fast path
  } else if (past > 0 || skip || (attention_mask.defined() && !is_right_padded(attention_mask))) {
    // With right padding (training batches) plain causal attention is already exact for
    // every real token: it never looks past itself, so never at the pads after it.
    mask = allowed().unsqueeze(1);
  }

  for (int64_t l = 0; l < cfg_.num_layers; ++l) {
    if (checkpoint_activations_ && !cache && torch::GradMode::is_enabled()) {  // keep only the block's input
      auto block = model->layers->ptr<BlockImpl>(l);
      x = checkpoint([=](const torch::Tensor& h) { return block->forward(h, cos, sin, mask, windows, nullptr, l); }, x,
                     block->parameters());
    } else {
      x = model->layers[l]->as<Block>()->forward(x, cos, sin, mask, windows, cache, l);
    }
  }
  if (cache) cache->length = S;
  return model->norm(x);
}

torch::Tensor TransformerImpl::token_scores(const torch::Tensor& tokens, const torch::Tensor& attention_mask) {
  check(!score.is_empty(), "token_scores: this model has no classification head (num_labels = 0)");
  auto positions = attention_mask.defined() ? positions_from_mask(attention_mask) : torch::Tensor();
  return score_head(hidden_states(tokens, positions, attention_mask));  // (B, T, num_labels)
}

torch::Tensor TransformerImpl::score_head(const torch::Tensor& hidden) {
  check(!score.is_empty(), "score_head: this model has no classification head (num_labels = 0)");
  const Autocast float32_products(hidden.device(), false);  // mixed precision keeps scores float32
  return score(hidden).to(torch::kFloat32);
}

torch::Tensor TransformerImpl::scores(const torch::Tensor& tokens, const torch::Tensor& attention_mask) {
  auto all = token_scores(tokens, attention_mask);  // (B, T, num_labels)
  // The last real token of each row, wherever the padding is: the largest index with mask 1.
  const int64_t T = tokens.size(1);
  auto idx = torch::arange(T, tokens.options().dtype(torch::kLong));
  auto last = attention_mask.defined() ? (attention_mask.to(torch::kLong) * idx).argmax(1)
                                       : torch::full({tokens.size(0)}, T - 1, tokens.options().dtype(torch::kLong));
  return all.gather(1, last.view({-1, 1, 1}).expand({-1, 1, all.size(2)})).squeeze(1);  // (B, num_labels)
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  check(score.is_empty(), "logits: a sequence-classification model has no language-model head");
  const Autocast float32_products(hidden.device(), false);  // mixed precision keeps logits float32
  if (lm_head) return lm_head(hidden).to(torch::kFloat32);
  if (model->embed_packed.defined()) {  // tied to the packed embedding
    check_inference(model->embed_packed, hidden);
    return packed_linear(hidden, model->embed_packed);
  }
  const auto& w = model->embed_tokens->weight;  // (V, C) tied
  if (own_kernel_applies(hidden, w)) return packed_linear(hidden, float_view(w));
  return torch::matmul(hidden, w.t()).to(torch::kFloat32);
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, const torch::Tensor& positions,
                                       const torch::Tensor& attention_mask, KVCache* cache) {
  return logits(hidden_states(tokens, positions, attention_mask, cache));
}

namespace {

// Every parameter under its canonical name (tensor_map.h). Fused parameters are split into
// views, so readers and writers see the HF layout while the forward pass runs one matmul
// instead of three. Packed matrices appear as their placeholders (their shapes).
TensorMap canonical_parameters(torch::nn::Module& m, const ModelConfig& cfg) {
  const int64_t q_rows = cfg.num_heads * cfg.head_dim, kv_rows = cfg.num_kv_heads * cfg.head_dim;
  const int64_t I = cfg.intermediate_size;
  auto split = [](TensorMap& out, const std::string& prefix, const std::string& suffix, const torch::Tensor& t,
                  std::vector<std::pair<std::string, int64_t>> parts) {
    int64_t at = 0;
    for (auto& [name, rows] : parts) {
      out[prefix + name + suffix] = t.narrow(0, at, rows);
      at += rows;
    }
  };
  TensorMap out;
  for (const auto& p : m.named_parameters()) {
    const std::string& name = p.key();
    if (is_lora_parameter(name)) continue;  // adapters are not weights of the model (model/lora.h)
    auto cut = [&](const std::string& fused) { return name.find(fused) != std::string::npos; };
    if (cut("self_attn.qkv_proj.")) {
      auto prefix = name.substr(0, name.find("qkv_proj.")), suffix = name.substr(name.rfind('.'));
      split(out, prefix, suffix, p.value(), {{"q_proj", q_rows}, {"k_proj", kv_rows}, {"v_proj", kv_rows}});
    } else if (cut("mlp.gate_up_proj.")) {
      auto prefix = name.substr(0, name.find("gate_up_proj.")), suffix = name.substr(name.rfind('.'));
      split(out, prefix, suffix, p.value(), {{"gate_proj", I}, {"up_proj", I}});
    } else {
      out[name] = p.value();
    }
  }
  return out;
}

}  // namespace

TensorMap TransformerImpl::weights() {
  check(!is_packed(), std::string("the model's weights are packed (") + weight_format_name(matrices_) +
                          ") for inference only; load it with --weights f32 (float32) to train or save it");
  return canonical_parameters(*this, cfg_);
}

void TransformerImpl::load_weights(const TensorMap& weights, const std::string& source,
                                   const std::map<std::string, PackedWeight>& packed) {
  torch::NoGradGuard no_grad;
  if (!is_packed() && !packed.empty()) {  // a float model takes packed matrices dequantized
    TensorMap all = weights;
    for (const auto& [name, w] : packed) all[name] = dequantize(w);
    return load_weights(all, source);
  }
  auto params = canonical_parameters(*this, cfg_);
  std::set<std::string> used;
  // One part of a packed matrix, in the model's format, from `packed` or from `weights`.
  auto part = [&](const std::string& name) {
    const auto& shape = params.at(name).sizes();
    PackedWeight w;
    if (auto it = packed.find(name); it != packed.end()) {
      check(it->second.rows == shape[0] && it->second.cols == shape[1],
            source + ": tensor " + name + " has shape [" + std::to_string(it->second.rows) + ", " +
                std::to_string(it->second.cols) + "], expected " + shape_str(shape));
      w = it->second.format == matrices_ ? it->second : pack(dequantize(it->second), matrices_);
    } else {
      auto t = weights.find(name);
      check(t != weights.end(), source + ": missing tensor " + name);
      check(t->second.sizes() == shape, source + ": tensor " + name + " has shape " + shape_str(t->second.sizes()) +
                                            ", expected " + shape_str(shape));
      w = pack(t->second, matrices_);
    }
    used.insert(name);
    return w;
  };
  if (is_packed()) {
    for (const auto& m : named_modules()) {
      auto* proj = m.value()->as<ProjectionImpl>();
      if (!proj) continue;
      std::vector<PackedWeight> parts;
      for (const auto& name : canonical_parts(m.key())) parts.push_back(part(name));
      proj->set_packed(parts.size() == 1 ? parts[0] : concat_rows(parts));
    }
    model->embed_packed = part("model.embed_tokens.weight");
  }
  for (auto& [name, param] : params) {
    if (used.contains(name)) continue;
    if (auto p = packed.find(name); p != packed.end()) {  // a float parameter stored packed (GPT-2's positions)
      check(param.dim() == 2 && p->second.rows == param.size(0) && p->second.cols == param.size(1),
            source + ": tensor " + name + " has shape [" + std::to_string(p->second.rows) + ", " +
                std::to_string(p->second.cols) + "], expected " + shape_str(param.sizes()));
      param.copy_(dequantize(p->second));
      continue;
    }
    auto it = weights.find(name);
    check(it != weights.end(), source + ": missing tensor " + name);
    check(it->second.sizes() == param.sizes(), source + ": tensor " + name + " has shape " +
                                                   shape_str(it->second.sizes()) + ", expected " +
                                                   shape_str(param.sizes()));
    param.copy_(it->second);
  }
  for (const auto& [name, t] : weights)
    check(params.contains(name), source + ": unexpected tensor " + name + " for this architecture");
  for (const auto& [name, w] : packed)
    check(params.contains(name), source + ": unexpected tensor " + name + " for this architecture");
}

void TransformerImpl::unpack() {
  torch::NoGradGuard no_grad;
  for (const auto& m : modules())
    if (auto* proj = m->as<ProjectionImpl>()) proj->unpack();
  if (model->embed_packed.defined()) {
    model->embed_tokens->weight.set_data(dequantize(model->embed_packed));
    model->embed_packed = {};
  }
  matrices_ = WeightFormat::F32;
}

int64_t TransformerImpl::matrix_bytes() const {
  int64_t n = 0;
  for (const auto& m : modules())
    if (const auto* proj = m->as<ProjectionImpl>())
      n += proj->packed().defined() ? proj->packed().bytes() : proj->weight.nbytes();
  if (lm_head.is_empty() && score.is_empty())  // the LM head is the embedding
    n += model->embed_packed.defined() ? model->embed_packed.bytes() : model->embed_tokens->weight.nbytes();
  return n;
}

}  // namespace rlhf
