#include "model/checkpoint.h"

#include "model/autocast.h"

namespace rlhf {

namespace {

// What the backward pass needs to run fn again: fn itself and the autocast setting it ran
// under (backward runs outside the caller's autocast scope, on CUDA even on another thread).
struct Recompute : torch::CustomClassHolder {
  std::function<torch::Tensor(const torch::Tensor&)> fn;
  AutocastState autocast;
};

struct CheckpointFn : torch::autograd::Function<CheckpointFn> {
  // Inputs as autograd counts them: x, each of params, then rc (not a tensor).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, at::TensorList params,
                               const c10::intrusive_ptr<Recompute>& rc) {
    std::vector<torch::Tensor> saved{x};
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(rc);
    // Gradients are off here (Function::apply), so nothing is kept. Autocast's cache of cast
    // weights is off too: a copy cast without gradients must not serve a later forward with them.
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    try {
      auto y = rc->fn(x);
      at::autocast::set_autocast_cache_enabled(cache);
      return y;
    } catch (...) {
      at::autocast::set_autocast_cache_enabled(cache);
      throw;
    }
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto rc = c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    auto inputs = ctx->get_saved_variables();  // x, then params
    inputs[0] = inputs[0].detach().requires_grad_(true);
    torch::Tensor y;
    {
      torch::AutoGradMode grad_on(true);
      const Autocast autocast(rc->autocast);
      y = rc->fn(inputs[0]);
    }
    auto grads = torch::autograd::grad({y}, inputs, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    grads.emplace_back();  // rc
    return grads;
  }
};

}  // namespace

torch::Tensor checkpoint(std::function<torch::Tensor(const torch::Tensor&)> fn, const torch::Tensor& x,
                         const std::vector<torch::Tensor>& params) {
  auto rc = c10::make_intrusive<Recompute>();
  rc->fn = std::move(fn);
  rc->autocast = AutocastState::current(x.device().type());
  std::vector<torch::Tensor> trained;  // torch::autograd::grad takes only tensors that need gradients
  for (const auto& p : params)
    if (p.requires_grad()) trained.push_back(p);
  return CheckpointFn::apply(x, at::TensorList(trained), rc);
}

}  // namespace rlhf
