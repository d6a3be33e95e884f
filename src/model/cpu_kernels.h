// Fused CPU kernels for the elementwise parts of a training step, forward and backward as
// autograd functions: RMSNorm (ATen's CPU autograd runs it as pow, mean, rsqrt and muls, each
// a pass over the activations, and as many again backwards) and SwiGLU's silu(gate) * up (a
// split, silu and mul, and their backwards). One pass each way; AVX-512.
#pragma once
#include <torch/torch.h>

namespace rlhf {

// Whether the fused kernels take activations like `x` (float32 on a CPU with AVX-512).
// RLHF_FUSED=0 in the environment turns them off (to compare against ATen's ops).
bool fused_cpu_kernels_apply(const torch::Tensor& x);

// x (..., C) -> x * rsqrt(mean(x^2) + eps) * weight; differentiable in x and weight.
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// gate_up (..., 2I), gate first -> silu(gate) * up (..., I); differentiable in gate_up.
torch::Tensor fused_swiglu(const torch::Tensor& gate_up);

}  // namespace rlhf
