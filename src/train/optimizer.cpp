#include "train/optimizer.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numbers>

#include "core/error.h"

namespace rlhf {

AdamW::AdamW(NamedParams params, AdamWOptions options) : params_(std::move(params)), opt_(options) {
  for (auto& [name, p] : params_) {
    m_.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
    v_.push_back(torch::zeros_like(p, p.options().dtype(torch::kFloat32)));
  }
  seen_.assign(params_.size(), false);
}

namespace {

// A float32 CPU tensor we may walk as one flat array.
bool flat_f32(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous();
}

// Pieces of at most kChunk elements of the parameters with flat float32 gradients: the
// units the optimizer's loops share between threads (whole parameters would balance badly:
// the embedding is as large as ten norms and projections together).
constexpr int64_t kChunk = 1 << 14;
struct Chunk {
  size_t param;
  int64_t begin, end;
};
// `take`: which parameters to cover (default: those with a flat gradient).
std::vector<Chunk> flat_chunks(const AdamW::NamedParams& params,
                               const std::function<bool(size_t)>& take = {}) {
  std::vector<Chunk> out;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i].second;
    if (!flat_f32(p) || !(take ? take(i) : flat_f32(p.grad()))) continue;
    for (int64_t b = 0, n = p.numel(); b < n; b += kChunk) out.push_back({i, b, std::min(n, b + kChunk)});
  }
  return out;
}

struct AdamConstants {
  float b1, c1, b2, c2, decay, eps;
  float inv_bc1, inv_bc2, lr, tf_step;
  float grad_scale;  // the gradient is g * grad_scale (gradient clipping)
};

// One pass of AdamW over n elements, branch-free so it vectorizes (AVX-512 where the CPU has
// it, chosen at load time). decay is 1 without weight decay. g null: a zero gradient.
__attribute__((target_clones("avx512f", "default"))) void adam_span(float* w, float* m, float* v, const float* g, int64_t n,
                                                                     const AdamConstants k, bool tf) {
  if (!g) {  // the moments decay and the parameter moves on them
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float mj = m[j] * k.b1, vj = v[j] * k.b2;
      m[j] = mj, v[j] = vj;
      w[j] = tf ? w[j] * k.decay - mj / (std::sqrt(vj) + k.eps) * k.tf_step
                : w[j] * k.decay - (mj * k.inv_bc1) / (std::sqrt(vj * k.inv_bc2) + k.eps) * k.lr;
    }
  } else if (tf) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float gj = g[j] * k.grad_scale;
      const float mj = m[j] * k.b1 + k.c1 * gj, vj = v[j] * k.b2 + k.c2 * gj * gj;
      m[j] = mj, v[j] = vj;
      w[j] = w[j] * k.decay - mj / (std::sqrt(vj) + k.eps) * k.tf_step;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float gj = g[j] * k.grad_scale;
      const float mj = m[j] * k.b1 + k.c1 * gj, vj = v[j] * k.b2 + k.c2 * gj * gj;
      m[j] = mj, v[j] = vj;
      w[j] = w[j] * k.decay - (mj * k.inv_bc1) / (std::sqrt(vj * k.inv_bc2) + k.eps) * k.lr;
    }
  }
}

__attribute__((target_clones("avx512f", "default"))) double sum_squares(const float* d, int64_t n) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += double(d[j]) * d[j];
  return s;
}

}  // namespace

void AdamW::step(double lr, double grad_scale) {
  torch::NoGradGuard no_grad;
  ++t_;
  const double bc1 = 1.0 - std::pow(opt_.beta1, double(t_)), bc2 = 1.0 - std::pow(opt_.beta2, double(t_));
  // Flat float32 parameters in one pass each, in chunks over the threads (instead of ~10
  // tensor ops per parameter, which dominated the step of a small model: PPO's minibatches
  // of a few hundred tokens).
  const AdamConstants k{float(opt_.beta1), float(1.0 - opt_.beta1), float(opt_.beta2), float(1.0 - opt_.beta2),
                        float(1.0 - lr * opt_.weight_decay), float(opt_.eps), float(1.0 / bc1), float(1.0 / bc2),
                        float(lr), float(lr * std::sqrt(bc2) / bc1), float(grad_scale)};
  // A parameter without a gradient this step that had one before takes a zero gradient (as
  // torch.optim.AdamW after zero_grad(set_to_none=False)); one that never had one is skipped.
  for (size_t i = 0; i < params_.size(); ++i) seen_[i] = seen_[i] || params_[i].second.grad().defined();
  // The flat path (flat_chunks also asks for a flat parameter): a flat gradient, or none.
  auto flat_grad = [&](size_t i) {
    const auto& g = params_[i].second.grad();
    return g.defined() ? flat_f32(g) : bool(seen_[i]);
  };
  const auto chunks = flat_chunks(params_, flat_grad);
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const Chunk& ch = chunks[c];
      auto& p = params_[ch.param].second;
      const auto& g = p.grad();
      adam_span(p.data_ptr<float>() + ch.begin, m_[ch.param].data_ptr<float>() + ch.begin,
                v_[ch.param].data_ptr<float>() + ch.begin, g.defined() ? g.data_ptr<float>() + ch.begin : nullptr,
                ch.end - ch.begin, k, opt_.tf_epsilon);
    }
  });
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!seen_[i] || (flat_f32(p) && flat_grad(i))) continue;  // never had a gradient, or done above
    auto g = p.grad().defined() ? p.grad().to(torch::kFloat32) * float(grad_scale) : torch::zeros_like(m_[i]);
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
  // None rather than zeros: the next backward then hands each parameter its gradient tensor
  // as it is (autograd's AccumulateGrad), where zeros cost a pass to clear and a pass to add
  // into (together ~5% of a PPO iteration of a small model). step() treats a missing
  // gradient as zero for a parameter that has had one, so updates are those of
  // torch.optim.AdamW after zero_grad(set_to_none=False).
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (p.grad().defined()) seen_[i] = true, p.mutable_grad() = torch::Tensor();
  }
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
    seen_[i] = v_[i].ne(0).any().item<bool>();  // had a (nonzero) gradient before the checkpoint
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

double grad_norm(const AdamW::NamedParams& params) {
  torch::NoGradGuard no_grad;
  // Sums of squares in double per chunk, added in chunk order: the same norm whatever the
  // thread count.
  const auto chunks = flat_chunks(params);
  std::vector<double> part(chunks.size());
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c)
      part[c] = sum_squares(params[chunks[c].param].second.grad().data_ptr<float>() + chunks[c].begin,
                            chunks[c].end - chunks[c].begin);
  });
  double sq = 0.0;
  for (double x : part) sq += x;
  for (const auto& [name, p] : params) {
    const auto& g = p.grad();
    if (g.defined() && !(flat_f32(p) && flat_f32(g))) sq += g.to(torch::kFloat32).pow(2).sum().item<double>();
  }
  return std::sqrt(sq);
}

double clip_scale(double norm, double max_norm) { return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0; }

AdamW::NamedParams named_trainable(torch::nn::Module& m) {
  AdamW::NamedParams out;
  for (const auto& p : m.named_parameters())
    if (p.value().requires_grad()) out.emplace_back(p.key(), p.value());
  return out;
}

}  // namespace rlhf
