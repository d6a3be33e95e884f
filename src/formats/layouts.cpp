// Rotary row permutations and the GPT-2 <-> canonical name/layout mapping.
#include "formats/layouts.h"

#include <regex>

#include "core/error.h"

namespace rlhf {
namespace {

// (n_heads*D, rest...) viewed as (n_heads, a, b, rest...), the middle two axes swapped.
torch::Tensor swap_row_axes(const torch::Tensor& w, int64_t n_heads, bool split_pairs_first) {
  check(w.dim() >= 1 && n_heads > 0 && w.size(0) % (2 * n_heads) == 0,
        "rotary permutation: " + std::to_string(w.size(0)) + " rows do not split into " +
            std::to_string(n_heads) + " heads of an even size");
  const int64_t half = w.size(0) / n_heads / 2;  // D/2
  std::vector<int64_t> shape = {n_heads, split_pairs_first ? half : 2, split_pairs_first ? 2 : half};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

}  // namespace

torch::Tensor rotary_interleaved_to_half(const torch::Tensor& w, int64_t n_heads) {
  // Meta row 2i+j sits at [h, i, j] of (n_heads, D/2, 2); after the swap it is at [h, j, i],
  // i.e. HF row j*D/2 + i.
  return swap_row_axes(w, n_heads, /*split_pairs_first=*/true);
}

torch::Tensor rotary_half_to_interleaved(const torch::Tensor& w, int64_t n_heads) {
  return swap_row_axes(w, n_heads, /*split_pairs_first=*/false);
}

TensorMap gpt2_to_canonical(const TensorMap& hf, const std::string& source) {
  static const std::regex layer_re(R"(h\.(\d+)\.(.+))");
  // Per-layer HF suffix -> canonical suffix (c_attn is split separately).
  static const std::map<std::string, std::string> layer_names = {
      {"ln_1.weight", "input_layernorm.weight"},
      {"ln_1.bias", "input_layernorm.bias"},
      {"attn.c_proj.weight", "self_attn.o_proj.weight"},
      {"attn.c_proj.bias", "self_attn.o_proj.bias"},
      {"ln_2.weight", "post_attention_layernorm.weight"},
      {"ln_2.bias", "post_attention_layernorm.bias"},
      {"mlp.c_fc.weight", "mlp.up_proj.weight"},
      {"mlp.c_fc.bias", "mlp.up_proj.bias"},
      {"mlp.c_proj.weight", "mlp.down_proj.weight"},
      {"mlp.c_proj.bias", "mlp.down_proj.bias"},
  };
  static const std::map<std::string, std::string> top_names = {
      {"wte.weight", "model.embed_tokens.weight"},
      {"wpe.weight", "model.embed_positions.weight"},
      {"ln_f.weight", "model.norm.weight"},
      {"ln_f.bias", "model.norm.bias"},
  };
  TensorMap out;
  for (const auto& [full_name, t] : hf) {
    if (full_name == "lm_head.weight") {
      out[full_name] = t;
      continue;
    }
    std::string name = full_name.rfind("transformer.", 0) == 0 ? full_name.substr(12) : full_name;
    if (auto it = top_names.find(name); it != top_names.end()) {
      out[it->second] = t;
      continue;
    }
    std::smatch m;
    if (!std::regex_match(name, m, layer_re)) {
      out[full_name] = t;  // unknown: left for validate_weights to name
      continue;
    }
    const std::string p = "model.layers." + m[1].str() + ".", rest = m[2].str();
    if (rest == "attn.bias" || rest == "attn.masked_bias") continue;  // causal-mask buffers
    const bool conv1d_weight = rest == "attn.c_attn.weight" || rest == "attn.c_proj.weight" ||
                               rest == "mlp.c_fc.weight" || rest == "mlp.c_proj.weight";
    if (conv1d_weight && t.dim() != 2)
      throw Error(source + ": tensor '" + full_name + "' has " + std::to_string(t.dim()) +
                  " dimensions, expected a 2-D Conv1D weight");
    if (rest == "attn.c_attn.weight" || rest == "attn.c_attn.bias") {
      // weight (C, 3C) in Conv1D (in, out) layout -> (3C, C) -> q, k, v rows; bias (3C).
      torch::Tensor w = rest == "attn.c_attn.weight" ? t.t() : t;
      if (w.dim() < 1 || w.size(0) == 0 || w.size(0) % 3 != 0)
        throw Error(source + ": tensor '" + full_name + "' does not split into q, k and v (shape " +
                    c10::str(t.sizes()) + ")");
      auto qkv = w.chunk(3, 0);
      const std::string kind = rest == "attn.c_attn.weight" ? "weight" : "bias";
      out[p + "self_attn.q_proj." + kind] = qkv[0].contiguous();
      out[p + "self_attn.k_proj." + kind] = qkv[1].contiguous();
      out[p + "self_attn.v_proj." + kind] = qkv[2].contiguous();
      continue;
    }
    auto it = layer_names.find(rest);
    if (it == layer_names.end()) {
      out[full_name] = t;
      continue;
    }
    out[p + it->second] = conv1d_weight ? t.t().contiguous() : t;
  }
  return out;
}

TensorMap canonical_to_gpt2(const TensorMap& canonical) {
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.+))");
  static const std::map<std::string, std::string> layer_names = {
      {"input_layernorm.weight", "ln_1.weight"},
      {"input_layernorm.bias", "ln_1.bias"},
      {"self_attn.o_proj.weight", "attn.c_proj.weight"},
      {"self_attn.o_proj.bias", "attn.c_proj.bias"},
      {"post_attention_layernorm.weight", "ln_2.weight"},
      {"post_attention_layernorm.bias", "ln_2.bias"},
      {"mlp.up_proj.weight", "mlp.c_fc.weight"},
      {"mlp.up_proj.bias", "mlp.c_fc.bias"},
      {"mlp.down_proj.weight", "mlp.c_proj.weight"},
      {"mlp.down_proj.bias", "mlp.c_proj.bias"},
  };
  static const std::map<std::string, std::string> top_names = {
      {"model.embed_tokens.weight", "transformer.wte.weight"},
      {"model.embed_positions.weight", "transformer.wpe.weight"},
      {"model.norm.weight", "transformer.ln_f.weight"},
      {"model.norm.bias", "transformer.ln_f.bias"},
      {"lm_head.weight", "lm_head.weight"},
      {"score.weight", "score.weight"},  // sequence-classification (reward) head
  };
  TensorMap out;
  for (const auto& [name, t] : canonical) {
    if (auto it = top_names.find(name); it != top_names.end()) {
      out[it->second] = t;
      continue;
    }
    std::smatch m;
    check(std::regex_match(name, m, layer_re), "GPT-2 export: unexpected tensor '" + name + "'");
    const std::string p = "transformer.h." + m[1].str() + ".", rest = m[2].str();
    if (rest.rfind("self_attn.q_proj.", 0) == 0) {
      // q, k, v (C, C) each -> (3C, C) -> Conv1D (C, 3C); biases (C) -> (3C).
      const std::string kind = rest.substr(std::string("self_attn.q_proj.").size());
      const std::string base = "model.layers." + m[1].str() + ".self_attn.";
      auto part = [&](const char* proj) {
        auto it = canonical.find(base + proj + "." + kind);
        check(it != canonical.end(), "GPT-2 export: missing tensor '" + base + proj + "." + kind + "'");
        return it->second;
      };
      torch::Tensor fused = torch::cat({part("q_proj"), part("k_proj"), part("v_proj")}, 0);
      out[p + "attn.c_attn." + kind] = kind == "weight" ? fused.t().contiguous() : fused;
      continue;
    }
    if (rest.rfind("self_attn.k_proj.", 0) == 0 || rest.rfind("self_attn.v_proj.", 0) == 0) continue;
    auto it = layer_names.find(rest);
    check(it != layer_names.end(), "GPT-2 export: unexpected tensor '" + name + "'");
    bool conv1d_weight = rest == "self_attn.o_proj.weight" || rest == "mlp.up_proj.weight" ||
                         rest == "mlp.down_proj.weight";
    out[p + it->second] = conv1d_weight ? t.t().contiguous() : t;
  }
  return out;
}

}  // namespace rlhf
