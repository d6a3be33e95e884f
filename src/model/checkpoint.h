// Activation checkpointing (torch.utils.checkpoint for libtorch): a function run without
// keeping its intermediate activations; the backward pass runs it again with gradients on and
// differentiates that run. One more forward pass of compute buys the memory of the activations.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace rlhf {

// y = fn(x), differentiable in x and in `params` (the tensors fn reads that need gradients,
// e.g. a block's parameters); only x is kept for the backward pass. fn must compute the same
// thing twice (no dropout) and read nothing else that needs gradients; it is recomputed under
// the autocast setting of x's device type at this call (model/autocast.h).
torch::Tensor checkpoint(std::function<torch::Tensor(const torch::Tensor&)> fn, const torch::Tensor& x,
                         const std::vector<torch::Tensor>& params);

}  // namespace rlhf
