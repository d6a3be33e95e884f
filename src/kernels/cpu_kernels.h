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

// Denormal floats flushed to zero on the calling thread and on every thread of the OpenMP
// team ATen's CPU ops run on (call it after setting the thread count). x86 computes with
// denormals in microcode, ~100x slower, and a training step's gradients are full of them:
// flushing made a reward-model step of stories260K 1.5x faster. Values change only below
// 1.2e-38. Our own kernels flush inside themselves whatever this says; this covers ATen's
// ops (matrix products, the optimizer's). RLHF_DENORMALS=keep in the environment leaves
// them (to compare). The CLI calls it at start.
void flush_denormals_on_cpu_threads();

// gate_up (..., 2I), gate first -> silu(gate) * up (..., I); differentiable in gate_up.
torch::Tensor fused_swiglu(const torch::Tensor& gate_up);

}  // namespace rlhf
