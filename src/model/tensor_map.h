// A model's weights by name. Every loader produces, and every writer consumes, the
// *canonical* names of our Transformer module, which are the Hugging Face Llama names:
//   model.embed_tokens.weight            (V, C)
//   model.embed_positions.weight         (T_max, C)   learned positions only (GPT-2)
//   model.layers.{i}.input_layernorm.{weight,bias}    (C)  bias only for LayerNorm
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight,bias}
//        q: (H*D, C)  k, v: (H_kv*D, C)  o: (C, H*D)  -- rotary layout is HF's rotate_half
//   model.layers.{i}.post_attention_layernorm.{weight,bias}
//   model.layers.{i}.mlp.{gate,up,down}_proj.{weight,bias}   gate only for SwiGLU
//        gate/up: (I, C)  down: (C, I)
//   model.norm.{weight,bias}
//   lm_head.weight                        (V, C)   absent when tie_word_embeddings
// Format-specific names and layouts (GGUF's blk.N.attn_q, GPT-2's fused Conv1D c_attn,
// Meta's interleaved rotary layout) are translated at the loader/writer boundary.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

namespace rlhf {
using TensorMap = std::map<std::string, torch::Tensor>;
}  // namespace rlhf
