// AdamW against libtorch's own torch::optim::AdamW, the TensorFlow-epsilon variant against
// its formula, the learning-rate schedules, and gradient clipping.
#include <gtest/gtest.h>

#include <cmath>

#include "train/optimizer.h"

using namespace rlhf;

namespace {
// A quadratic with a fixed target, so both optimizers see the same gradients step by step.
torch::Tensor loss_of(const torch::Tensor& w) { return (w - torch::arange(6, torch::kFloat32)).pow(2).sum() * 0.5; }
}  // namespace

TEST(Optimizer, AdamWMatchesTorchOptimAdamW) {
  torch::manual_seed(0);
  auto a = torch::randn({6}).requires_grad_(true);
  auto b = a.detach().clone().requires_grad_(true);
  AdamW ours({{"w", a}}, {.beta1 = 0.9, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.1});
  torch::optim::AdamW ref({b}, torch::optim::AdamWOptions(0.05).betas({0.9, 0.99}).eps(1e-6).weight_decay(0.1));
  for (int step = 0; step < 20; ++step) {
    ours.zero_grad();
    loss_of(a).backward();
    ours.step(0.05);
    ref.zero_grad();
    loss_of(b).backward();
    ref.step();
  }
  EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-6)) << a << b;
  EXPECT_EQ(ours.steps(), 20);
}

// Several parameters, one larger than a chunk of the threaded loop (2^14 elements) and one
// not contiguous (the tensor-op path), and a parameter left out of the loss in some steps
// (no gradient then: it keeps moving on its moments, as with torch's
// zero_grad(set_to_none=false)); one never in the loss stays as it was.
TEST(Optimizer, AdamWMatchesTorchOnLargeAndStridedParameters) {
  torch::manual_seed(1);
  auto big = torch::randn({40000}), small = torch::randn({7}), strided = torch::randn({8, 6}).t();
  std::vector<torch::Tensor> ours_p, ref_p;
  for (const auto& t : {big, small, strided}) {
    ours_p.push_back(t.clone().requires_grad_(true));
    ref_p.push_back(t.clone().requires_grad_(true));
  }
  ours_p[2] = strided.clone().t().contiguous().t().requires_grad_(true);  // keep it non-contiguous
  ASSERT_FALSE(ours_p[2].is_contiguous());
  auto unused = torch::randn({5}).requires_grad_(true), unused_before = unused.detach().clone();
  AdamW ours({{"big", ours_p[0]}, {"small", ours_p[1]}, {"strided", ours_p[2]}, {"unused", unused}},
             {.beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.01});
  torch::optim::AdamW ref(ref_p, torch::optim::AdamWOptions(0.01).betas({0.9, 0.99}).eps(1e-8).weight_decay(0.01));
  auto loss = [](const std::vector<torch::Tensor>& p, bool with_small) {
    auto l = (p[0] * torch::linspace(-1, 1, 40000)).sin().sum() + p[2].square().sum();
    return with_small ? l + p[1].pow(3).sum() : l;
  };
  for (int step = 0; step < 6; ++step) {
    const bool with_small = step % 2 == 0;
    ours.zero_grad();
    loss(ours_p, with_small).backward();
    ours.step(0.01);
    ref.zero_grad(/*set_to_none=*/false);
    loss(ref_p, with_small).backward();
    ref.step();
  }
  for (size_t i = 0; i < 3; ++i)
    EXPECT_TRUE(torch::allclose(ours_p[i], ref_p[i], 1e-5, 1e-6)) << "parameter " << i << " off by " << (ours_p[i] - ref_p[i]).abs().max().item<double>();
  EXPECT_TRUE(torch::equal(unused, unused_before));
}

TEST(Optimizer, TensorFlowEpsilonIsAddedBeforeBiasCorrection) {
  // First step from zero state with gradient g: m = (1-b1) g, v = (1-b2) g^2.
  // TF: lr * sqrt(1-b2)/(1-b1) * m / (sqrt(v) + eps) = lr * g sqrt(1-b2) / (|g| sqrt(1-b2) + eps)
  auto w = torch::zeros({1}).requires_grad_(true);
  const double lr = 0.1, eps = 1e-3, b2 = 0.999, g = 0.01;
  AdamW tf({{"w", w}}, {.beta1 = 0.9, .beta2 = b2, .eps = eps, .tf_epsilon = true});
  w.mutable_grad() = torch::full({1}, g);
  tf.step(lr);
  const double expected = -lr * g * std::sqrt(1 - b2) / (g * std::sqrt(1 - b2) + eps);
  EXPECT_NEAR(w.item<double>(), expected, 1e-7);
  // PyTorch-style with the same eps moves further on this first step (why lm-human-preferences' TensorFlow Adam is gentler early on).
  auto u = torch::zeros({1}).requires_grad_(true);
  AdamW pt({{"u", u}}, {.beta1 = 0.9, .beta2 = b2, .eps = eps});
  u.mutable_grad() = torch::full({1}, g);
  pt.step(lr);
  EXPECT_LT(u.item<double>(), w.item<double>());
}

TEST(Optimizer, StateRoundTrips) {
  auto a = torch::ones({3}).requires_grad_(true);
  AdamW o({{"a", a}}, {});
  a.mutable_grad() = torch::full({3}, 0.5);
  o.step(0.1);
  auto b = torch::ones({3}).requires_grad_(true);
  AdamW p({{"a", b}}, {});
  p.load_state(o.state(), "test");
  EXPECT_EQ(p.steps(), 1);
  EXPECT_TRUE(torch::equal(p.state().at("exp_avg.a"), o.state().at("exp_avg.a")));
  EXPECT_ANY_THROW(p.load_state({}, "empty"));
}

TEST(Optimizer, Schedules) {
  // warmup 2 of 10 steps, peak 1
  EXPECT_DOUBLE_EQ(lr_at(0, 10, 2, 1.0, "linear"), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(1, 10, 2, 1.0, "linear"), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(2, 10, 2, 1.0, "linear"), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(6, 10, 2, 1.0, "linear"), 0.5);
  EXPECT_DOUBLE_EQ(lr_at(6, 10, 2, 1.0, "cosine"), 0.5);
  EXPECT_NEAR(lr_at(4, 10, 2, 1.0, "cosine"), 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_DOUBLE_EQ(lr_at(9, 10, 0, 2.0, "constant"), 2.0);
  EXPECT_ANY_THROW(lr_at(0, 10, 0, 1.0, "exponential"));
}

TEST(Optimizer, GradNormAndClipScale) {
  auto a = torch::zeros({2}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  auto none = torch::zeros({3}).requires_grad_(true);  // no gradient: counts as zero
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(grad_norm({{"a", a}, {"b", b}, {"none", none}}), 5.0, 1e-6);
  EXPECT_NEAR(clip_scale(5.0, 1.0), 1.0 / (5.0 + 1e-6), 1e-12);  // as torch's clip_grad_norm_
  EXPECT_EQ(clip_scale(5.0, 10.0), 1.0);                           // under the limit
  EXPECT_EQ(clip_scale(5.0, 0.0), 1.0);                            // no clipping
}

// step(lr, s) is step(lr) on gradients scaled by s, bit for bit, on both paths (a flat
// parameter and a non-contiguous one).
TEST(Optimizer, StepScalesTheGradient) {
  torch::manual_seed(2);
  const auto w0 = torch::randn({40000}), u0 = torch::randn({6, 4}).t();
  const auto gw = torch::randn({40000}), gu = torch::randn({4, 6});
  const float s = 0.37f;
  auto run = [&](bool scale_inside) {
    auto w = w0.clone().requires_grad_(true), u = u0.clone().t().contiguous().t().requires_grad_(true);
    AdamW o({{"w", w}, {"u", u}}, {.weight_decay = 0.01});
    for (int step = 0; step < 3; ++step) {
      w.mutable_grad() = scale_inside ? gw.clone() : gw * s;
      u.mutable_grad() = scale_inside ? gu.clone() : gu * s;
      o.step(0.01, scale_inside ? s : 1.0);
    }
    return std::make_pair(w.detach(), u.detach());
  };
  const auto [w_in, u_in] = run(true);
  const auto [w_out, u_out] = run(false);
  EXPECT_TRUE(torch::equal(w_in, w_out));
  EXPECT_TRUE(torch::equal(u_in, u_out));
  EXPECT_FALSE(torch::equal(w_in, w0));
}
