// Translations between the canonical tensor layout (tensor_map.h) and the layouts other
// formats use: Meta's interleaved rotary rows (llama2.c, GGUF llama) and GPT-2's names with
// its fused, transposed Conv1D weights. Small free functions so tests can check them directly.
#pragma once
#include <string>

#include "model/tensor_map.h"

namespace rlhf {

// Rows of a q or k projection, per head of D rows. Meta's layout rotates rows (2i, 2i+1)
// together; HF's rotate_half layout rotates rows (i, i + D/2). Row 2i+j of a head (Meta)
// becomes row j*D/2 + i (HF). w: (n_heads*D, C) weight or (n_heads*D) bias; n_heads = H for
// q, H_kv for k. The two functions are each other's inverse.
torch::Tensor rotary_interleaved_to_half(const torch::Tensor& w, int64_t n_heads);
torch::Tensor rotary_half_to_interleaved(const torch::Tensor& w, int64_t n_heads);

// GPT-2 as Hugging Face stores it (transformer.h.N.attn.c_attn ..., with or without the
// "transformer." prefix; Conv1D weights are (in, out)) -> canonical names, with c_attn split
// into q/k/v and every weight turned to the (out, in) Linear layout. The causal-mask buffers
// (attn.bias, attn.masked_bias) are dropped; names it does not know pass through unchanged
// so that validate_weights reports them. Errors name `source`.
TensorMap gpt2_to_canonical(const TensorMap& hf, const std::string& source = "GPT-2 checkpoint");
// The reverse: canonical -> transformer.* names as GPT2LMHeadModel.save_pretrained writes them.
TensorMap canonical_to_gpt2(const TensorMap& canonical);

}  // namespace rlhf
