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
  // PyTorch-style with the same eps moves further on this first step (PPO_DETAILS #16).
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

TEST(Optimizer, ClipGradNormScalesToTheLimit) {
  auto a = torch::zeros({2}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  AdamW::NamedParams ps{{"a", a}, {"b", b}};
  EXPECT_NEAR(clip_grad_norm(ps, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 0.6f, 1e-5);
  EXPECT_NEAR(b.grad()[0].item<float>(), 0.8f, 1e-5);
  EXPECT_NEAR(clip_grad_norm(ps, 10.0), 1.0, 1e-5);  // under the limit: unchanged
}
