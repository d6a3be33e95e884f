// Causal self-attention for the CPU at small head sizes, forward and backward, as one
// autograd function. ATen's fused CPU kernel (flash attention) is built for head sizes of
// 64 and more; at the 8-32 of small policies its blocked GEMMs run mostly empty and its
// backward dominated a training step (half of it at stories260K). This kernel works one
// (sequence, K/V head) at a time with K and V transposed to (D, T), so every inner loop runs
// over key positions: contiguous, vectorized (AVX-512 / AVX2 chosen at load time), and the
// (T x T) probabilities are never stored: the backward recomputes them from the saved
// log-sum-exp, as flash attention does.
//
// A decoding step (one new token per row against the KV cache) has its own kernel, for head
// sizes up to 256: there ATen's route is a dozen small ops per layer (rotary, cache copies,
// two matmuls, mask, softmax) whose dispatch costs more than their arithmetic.
//
// Row b attends over a window: query i sees keys j with start[b] <= j <= i, and always
// itself (rows of left padding, i < start[b], see only themselves and stay finite). That
// covers plain causal attention (start 0), right-padded batches (real rows never look past
// themselves) and left-padded ones (start = the first real token). Rows from end[b] on are
// right padding: their output is 0 and they take no work. Two completions that share one
// prompt can sit in one row (prompt, first completion, second completion): query rows from
// skip_end[b] on then do not see keys [skip_begin[b], skip_end[b]), the first completion.
#pragma once
#include <torch/torch.h>

namespace rlhf {

// The windows of a batch's rows, (B) int64 each; undefined: start 0, end T, no skip.
struct AttentionWindows {
  torch::Tensor start, end;             // keys from start[b]; rows from end[b] on are padding
  torch::Tensor skip_begin, skip_end;   // rows >= skip_end[b] skip keys [skip_begin[b], skip_end[b])
};

// qkv (B, T, H + 2 H_kv, D): the fused projection, query heads then key heads then value
// heads (any strides, D contiguous). cos/sin (B or 1, T, 1, D) rotate the query and key
// heads (rotary embedding, rotate-half convention) inside the kernel, or are undefined
// (learned positions). H a multiple of H_kv; D even and at most 32; float32 on a CPU with
// AVX-512; start[b] <= skip_begin[b] <= skip_end[b] <= end[b] when skipping. Returns
// (B, T, H, D), contiguous. Differentiable in qkv; its gradient comes back as one tensor,
// written once.
torch::Tensor causal_attention_cpu(const torch::Tensor& qkv, int64_t H, int64_t Hkv, const torch::Tensor& cos = {},
                                   const torch::Tensor& sin = {}, const AttentionWindows& windows = {});

// One decoding step from the fused projection of the new token, qkv (B, 1, H + 2 H_kv, D):
// rotates its key (cos/sin (B or 1, 1, 1, D), or undefined) and writes key and value at
// position `past` of the transposed caches k and v (B, H_kv, D, capacity), then attends from
// the rotated queries over positions [start[b], past] (a row with start[b] > past, padding
// only, sees its own position). Any even head size up to 256: the G = H / H_kv query heads
// of a K/V head are done together, reading its cache once. No gradients. Returns (B, 1, H, D).
torch::Tensor decode_step_cpu(const torch::Tensor& qkv, int64_t H, int64_t Hkv, const torch::Tensor& cos,
                              const torch::Tensor& sin, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              int64_t past, const torch::Tensor& start);

// Whether causal_attention_cpu takes activations like `x` (float32, CPU) at this head size
// (at most 32) on this CPU (AVX-512). RLHF_ATTENTION=sdpa in the environment turns it off
// everywhere, as it does decode_step_cpu (to compare against ATen's kernels).
bool causal_attention_cpu_applies(const torch::Tensor& x, int64_t head_dim);

// The same for decode_step_cpu: even head sizes up to 256.
bool decode_step_cpu_applies(const torch::Tensor& x, int64_t head_dim);

}  // namespace rlhf
