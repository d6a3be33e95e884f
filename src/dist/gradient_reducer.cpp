#include "dist/gradient_reducer.h"

#include "core/error.h"

namespace rlhf {

GradientReducer::GradientReducer(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : group_(group), params_(std::move(params)) {
  if (group_.world() == 1) return;
  check(bucket_bytes > 0, "gradient buckets: the bucket size must be > 0 bytes");
  const size_t n = params_.size();
  bucket_of_.assign(n, 0);
  slot_of_.assign(n, 0);
  has_grad_.assign(n, 0);
  // Reverse order: the last layers' gradients are final first. A bucket holds one dtype.
  int64_t bytes = 0;
  for (size_t k = n; k-- > 0;) {
    const auto& p = params_[k];
    check(p.is_floating_point() && p.device().is_cpu(),
          "data-parallel training runs on the CPU (Gloo); parameters on " + p.device().str() +
              " would need c10d's NCCL backend, which rlhf.cpp does not use yet");
    const bool fits = !buckets_.empty() && bytes + p.nbytes() <= static_cast<size_t>(bucket_bytes) &&
                      params_[buckets_.back().params[0]].scalar_type() == p.scalar_type();
    if (!fits) {
      buckets_.emplace_back();
      bytes = 0;
    }
    auto& b = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    slot_of_[k] = b.params.size();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + params_[b.params.back()].numel());
    b.params.push_back(k);
    bytes += p.nbytes();
  }
  for (auto& b : buckets_) {
    const auto& last = params_[b.params.back()];
    b.buffer = torch::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
  }
  for (size_t k = 0; k < n; ++k)
    hooks_.push_back(params_[k].register_hook([this, k](const torch::Tensor& grad) { on_gradient(k, grad); }));
}

GradientReducer::~GradientReducer() {
  for (size_t k = 0; k < hooks_.size(); ++k) params_[k].remove_hook(hooks_[k]);
}

void GradientReducer::arm() {
  if (group_.world() == 1) return;
  std::lock_guard<std::mutex> lock(mutex_);
  armed_ = true;
  next_ = 0;
  started_in_backward_ = 0;
  std::fill(has_grad_.begin(), has_grad_.end(), 0);
  for (auto& b : buckets_) {
    b.missing = b.params.size();
    b.wait = nullptr;
  }
}

void GradientReducer::on_gradient(size_t k, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_) return;
  check(!has_grad_[k], "gradient buckets: a parameter got a second gradient in the step's last backward pass");
  torch::NoGradGuard no_grad;
  auto& b = buckets_[bucket_of_[k]];
  const auto& p = params_[k];
  auto slot = b.buffer.narrow(0, b.offsets[slot_of_[k]], p.numel());
  // The gradient autograd is about to add to .grad: with accumulation, the sum of both is final.
  if (p.grad().defined()) slot.copy_((p.grad() + grad).reshape({-1}));
  else slot.copy_(grad.reshape({-1}));
  has_grad_[k] = 1;
  --b.missing;
  const size_t before = next_;
  start_ready();
  started_in_backward_ += static_cast<int64_t>(next_ - before);
}

void GradientReducer::start_ready() {
  while (next_ < buckets_.size() && buckets_[next_].missing == 0) {
    buckets_[next_].wait = group_.start_allreduce_sum(buckets_[next_].buffer);
    ++next_;
  }
}

void GradientReducer::finish(std::vector<double>& figures) {
  if (group_.world() == 1) return;
  if (!armed_) arm();  // this rank ran no backward pass in the step (nothing of the batch was its)
  torch::NoGradGuard no_grad;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Gradients the last backward pass did not touch: those of earlier micro-batches, else 0.
    for (size_t j = next_; j < buckets_.size(); ++j) {
      auto& b = buckets_[j];
      for (size_t s = 0; s < b.params.size(); ++s) {
        const size_t k = b.params[s];
        if (has_grad_[k]) continue;
        const auto& p = params_[k];
        auto slot = b.buffer.narrow(0, b.offsets[s], p.numel());
        if (p.grad().defined()) {
          slot.copy_(p.grad().reshape({-1}));
          has_grad_[k] = 1;
        } else {
          slot.zero_();
        }
      }
      b.missing = 0;
    }
    start_ready();
    armed_ = false;
  }
  for (auto& b : buckets_) b.wait();
  const size_t n = figures.size();
  for (size_t k = 0; k < params_.size(); ++k) figures.push_back(has_grad_[k] || params_[k].grad().defined() ? 1.0 : 0.0);
  figures = group_.allreduce_sum(figures);
  for (size_t k = 0; k < params_.size(); ++k) {
    auto& p = params_[k];
    const auto& b = buckets_[bucket_of_[k]];
    if (figures[n + k] == 0.0) {
      p.mutable_grad() = torch::Tensor();  // no rank had a gradient: AdamW skips it, as in one process
      continue;
    }
    auto summed = b.buffer.narrow(0, b.offsets[slot_of_[k]], p.numel()).view_as(p);
    if (p.grad().defined()) p.mutable_grad().copy_(summed);
    else p.mutable_grad() = summed.clone();
  }
  figures.resize(n);
}

}  // namespace rlhf
