#include "train/optimizer.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace rlhf {

AdamW::AdamW(NamedParams params, AdamWOptions options) : params_(std::move(params)), opt_(options) {
  for (auto& [name, p] : params_) {
    m_.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
    v_.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
  }
}

namespace {

// A float32 CPU tensor we may walk as one flat array.
bool flat_f32(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
}

}  // namespace

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++t_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, double(t_)), bc2 = 1.0 - std::pow(opt_.beta2, double(t_));
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    if (flat_f32(p) && flat_f32(p.grad())) {
      // One pass over the parameter instead of ~10 tensor ops (they dominate the step of a
      // small model: PPO's minibatches of a few hundred tokens). Same float arithmetic.
      float *w = p.data_ptr<float>(), *m = m_[i].data_ptr<float>(), *v = v_[i].data_ptr<float>();
      const float* g = p.grad().data_ptr<float>();
      const float b1 = opt_.beta1, c1 = 1.0 - opt_.beta1, b2 = opt_.beta2, c2 = 1.0 - opt_.beta2;
      const float decay = 1.0 - lr * opt_.weight_decay, eps = opt_.eps, lr_f = lr;
      const float bc1_f = bc1, bc2_f = bc2, tf_step = lr * std::sqrt(bc2) / bc1;
      const bool wd = opt_.weight_decay != 0.0, tf = opt_.tf_epsilon;
      const int64_t n = p.numel();
      for (int64_t j = 0; j < n; ++j) {
        const float mj = m[j] * b1 + c1 * g[j];
        const float vj = v[j] * b2 + c2 * g[j] * g[j];
        m[j] = mj;
        v[j] = vj;
        const float wj = wd ? w[j] * decay : w[j];
        const float update = tf ? mj / (std::sqrt(vj) + eps) * tf_step : (mj / bc1_f) / (std::sqrt(vj / bc2_f) + eps) * lr_f;
        w[j] = wj - update;
      }
      continue;
    }
    auto g = p.grad().to(torch::kFloat32);
    m_[i].mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    v_[i].mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    // Decoupled weight decay (Loshchilov & Hutter), applied as PyTorch's AdamW does.
    if (opt_.weight_decay != 0.0) p.mul_(1.0 - lr * opt_.weight_decay);
    torch::Tensor update;
    if (opt_.tf_epsilon) {
      update = m_[i] / (v_[i].sqrt() + opt_.eps) * (lr * std::sqrt(bc2) / bc1);
    } else {
      update = (m_[i] / bc1) / ((v_[i] / bc2).sqrt() + opt_.eps) * lr;
    }
    p.sub_(update.to(p.scalar_type()));
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.grad().defined()) p.mutable_grad().zero_();
}

TensorMap AdamW::state() const {
  TensorMap s;
  for (size_t i = 0; i < params_.size(); ++i) {
    s["exp_avg." + params_[i].first] = m_[i];
    s["exp_avg_sq." + params_[i].first] = v_[i];
  }
  s["step"] = torch::tensor(t_, torch::kInt64);
  return s;
}

void AdamW::load_state(const TensorMap& state, const std::string& source) {
  torch::NoGradGuard no_grad;
  auto get = [&](const std::string& key) -> const torch::Tensor& {
    auto it = state.find(key);
    check(it != state.end(), source + ": optimizer state has no " + key);
    return it->second;
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    m_[i].copy_(get("exp_avg." + params_[i].first));
    v_[i].copy_(get("exp_avg_sq." + params_[i].first));
  }
  t_ = get("step").item<int64_t>();
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double peak, const std::string& schedule) {
  if (warmup > 0 && step < warmup) return peak * double(step + 1) / double(warmup);
  if (schedule == "constant") return peak;
  const double span = std::max<int64_t>(1, total - warmup);
  const double progress = std::clamp(double(step - warmup) / span, 0.0, 1.0);
  if (schedule == "linear") return peak * (1.0 - progress);
  if (schedule == "cosine") return peak * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  throw Error("unknown lr_schedule '" + schedule + "' (expected linear, cosine or constant)");
}

double clip_grad_norm(const AdamW::NamedParams& params, double max_norm) {
  torch::NoGradGuard no_grad;
  double sq = 0.0;
  for (const auto& [name, p] : params) {
    const auto& g = p.grad();
    if (!g.defined()) continue;
    if (flat_f32(g)) {  // summed in double without a tensor op and a sync per parameter
      const float* d = g.data_ptr<float>();
      double s = 0.0;
      for (int64_t j = 0, n = g.numel(); j < n; ++j) s += double(d[j]) * d[j];
      sq += s;
    } else {
      sq += g.to(torch::kFloat32).pow(2).sum().item<double>();
    }
  }
  const double norm = std::sqrt(sq);
  if (max_norm > 0 && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (const auto& [name, p] : params)
      if (p.grad().defined()) p.mutable_grad().mul_(scale);
  }
  return norm;
}

}  // namespace rlhf
