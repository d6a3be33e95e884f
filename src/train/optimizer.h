// AdamW with decoupled weight decay, in two epsilon conventions (lm-human-preferences trained with TensorFlow's Adam):
//   PyTorch: p -= lr * m_hat / (sqrt(v_hat) + eps)
//   TensorFlow: p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), i.e. eps is
//   added before the bias correction, so early steps (small v) move less than PyTorch's.
// Written here rather than taken from torch::optim so its state is plain named tensors that
// checkpoints store and restore exactly.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "model/tensor_map.h"

namespace rlhf {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool tf_epsilon = false;
};

class AdamW {
 public:
  using NamedParams = std::vector<std::pair<std::string, torch::Tensor>>;
  AdamW(NamedParams params, AdamWOptions options);

  // One update from the current .grad() of every parameter, times grad_scale (clipping:
  // see clip_scale), the scaling done inside the update rather than as a pass of its own.
  void step(double lr, double grad_scale = 1.0);
  void zero_grad();       // gradients to none; see step() for what a missing one means
  int64_t steps() const { return t_; }

  TensorMap state() const;  // "exp_avg.<name>", "exp_avg_sq.<name>" and "step"
  void load_state(const TensorMap& state, const std::string& source);

 private:
  NamedParams params_;
  AdamWOptions opt_;
  std::vector<torch::Tensor> m_, v_;  // same shapes as the parameters, float32
  std::vector<char> seen_;            // per parameter: has had a gradient (then none = zero)
  int64_t t_ = 0;
};

// Learning rate at optimizer step `step` (0-based) of `total`: linear warmup from 0 over
// `warmup` steps, then "linear" decay to 0, "cosine" decay to 0, or "constant".
double lr_at(int64_t step, int64_t total, int64_t warmup, double peak, const std::string& schedule);

// The global L2 norm of the parameters' gradients (missing ones count as zero).
// Trainable parameters (requires_grad) under stable (module) names, for the optimizer and
// checkpoints.
AdamW::NamedParams named_trainable(torch::nn::Module& m);

double grad_norm(const AdamW::NamedParams& params);
// Gradient clipping: the factor that brings a gradient of global norm `norm` down to at most
// max_norm, max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_ (1 when under the
// limit or max_norm <= 0). Pass it to AdamW::step.
double clip_scale(double norm, double max_norm);

}  // namespace rlhf
