// PPO math (src/losses/ppo.h) against TRL's formulas (tests/fixtures/ppo_fixtures.json, written by
// scripts/gen_ppo_fixtures.py), against values worked out by hand, and for gradients.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "fixture_util.h"
#include "losses/ppo.h"

using namespace rlhf;
using nlohmann::json;
using test::expect_near;
using test::tensor;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

const json& fixture() {
  static const json j = test::load_fixture("ppo_fixtures.json", "scripts/gen_ppo_fixtures.py");
  return j;
}

// A (B, T) fixture tensor.
torch::Tensor bt(const json& values) { return tensor(values, {fixture()["B"].get<int64_t>(), -1}); }
torch::Tensor fixture_mask() { return bt(fixture()["mask"]); }

double item(const torch::Tensor& t) { return t.item<double>(); }

}  // namespace

// ---- against TRL ---------------------------------------------------------------------

TEST(PpoTRL, MaskedMeanVarAndWhiten) {
  const auto& s = fixture()["stats"];
  auto x = bt(s["x"]), mask = fixture_mask();  // x holds 100 on padding
  expect_near(masked_mean(x, mask), s["mean"], "mean");
  expect_near(masked_mean(x, mask, 1), s["mean_dim1"], "mean over dim 1");
  expect_near(masked_var(x, mask), s["var_biased"], "biased var");
  expect_near(masked_var(x, mask, /*unbiased=*/true), s["var_unbiased"], "unbiased var");
  for (const auto& c : s["whiten"]) {
    const bool shift_mean = c["shift_mean"], unbiased = c["unbiased"];
    expect_near(masked_whiten(x, mask, shift_mean, unbiased), c["out"],
                "whiten shift_mean " + c["shift_mean"].dump() + " unbiased " + c["unbiased"].dump());
  }
}

TEST(PpoTRL, KlEstimatesAndPerTokenRewards) {
  const auto& j = fixture();
  const auto& r = j["rollout"];
  auto mask = fixture_mask();
  for (const auto& c : j["rewards"]) {
    auto estimator = c["estimator"] == "k3" ? KlEstimator::K3 : KlEstimator::K1;
    auto out = per_token_rewards(bt(r["logprobs"]), bt(r["ref_logprobs"]), tensor(r["scores"], {-1}), mask,
                                 c["kl_coef"].get<double>(), estimator);
    const std::string what = c["estimator"].get<std::string>() + " kl_coef " + c["kl_coef"].dump();
    expect_near(out.kl, c["kl"], what + " kl");
    expect_near(out.rewards, c["rewards"], what + " rewards");
  }
}

TEST(PpoTRL, GaeAdvantagesReturnsAndWhitenedAdvantages) {
  const auto& j = fixture();
  auto mask = fixture_mask();
  const auto& r = j["rollout"];
  // The rewards TRL's GAE read: k1, kl_coef 0.05 (the first rewards case).
  auto rewards = bt(j["rewards"][0]["rewards"]);
  auto values = bt(r["values"]);  // 9 on padding, which GAE must ignore
  for (const auto& c : j["gae"]) {
    auto out = gae(rewards, values, mask, c["gamma"].get<double>(), c["lam"].get<double>());
    const std::string what = "gamma " + c["gamma"].dump() + " lam " + c["lam"].dump();
    expect_near(out.advantages, c["advantages"], what + " advantages");
    expect_near(out.returns, c["returns"], what + " returns");
    expect_near(masked_whiten(out.advantages, mask), c["advantages_whitened"], what + " whitened");
    expect_near(masked_whiten(out.advantages, mask, true, /*unbiased=*/true), c["advantages_whitened_unbiased"],
                what + " whitened as TRL");
  }
}

TEST(PpoTRL, PolicyAndValueLosses) {
  const auto& l = fixture()["losses"];
  auto mask = fixture_mask();
  auto logprobs = bt(l["logprobs"]), old_logprobs = bt(l["old_logprobs"]), advantages = bt(l["advantages"]);
  for (const auto& c : l["policy"]) {
    auto out = ppo_policy_loss(logprobs, old_logprobs, advantages, mask, c["clip_range"].get<double>());
    const std::string what = "policy clip " + c["clip_range"].dump();
    EXPECT_EQ(out.loss.dim(), 0);
    expect_near(out.loss, c["loss"], what + " loss");
    expect_near(out.clipfrac, c["clipfrac"], what + " clipfrac");
    expect_near(out.approxkl, c["approxkl"], what + " approxkl");
    expect_near(out.ratio_mean, c["ratio_mean"], what + " ratio mean");
    expect_near(out.ratio_min, c["ratio_min"], what + " ratio min");
    expect_near(out.ratio_max, c["ratio_max"], what + " ratio max");
  }
  auto values = bt(l["values"]), old_values = bt(l["old_values"]), returns = bt(l["returns"]);
  for (const auto& c : l["value"]) {
    auto out = ppo_value_loss(values, old_values, returns, mask, c["clip_range_value"].get<double>());
    const std::string what = "value clip " + c["clip_range_value"].dump();
    expect_near(out.loss, c["loss"], what + " loss");
    expect_near(out.clipfrac, c["clipfrac"], what + " clipfrac");
  }
  expect_near(explained_variance(values, returns, mask), l["explained_variance"], "explained variance");
}

TEST(PpoTRL, EntropyMissingEosAndKlController) {
  const auto& j = fixture();
  const int64_t B = j["B"], T = j["T"], V = j["V"];
  expect_near(entropy_from_logits(tensor(j["entropy"]["logits"], {B, T, V}), fixture_mask()), j["entropy"]["entropy"],
              "entropy");

  const auto& e = j["missing_eos"];
  auto scores = tensor(e["scores"], {-1});
  std::vector<int64_t> eos;
  for (bool b : e["has_eos"]) eos.push_back(b);
  auto has_eos = torch::tensor(eos).to(torch::kBool);
  expect_near(missing_eos_penalty(scores, has_eos, e["subtract_penalty"].get<double>(), EosPenaltyMode::Subtract),
              e["subtracted"], "missing EOS, subtract");
  expect_near(missing_eos_penalty(scores, has_eos, e["replace_penalty"].get<double>()), e["replaced"],
              "missing EOS, replace");

  const auto& k = j["kl_controller"];
  AdaptiveKlController ctl(k["init_kl_coef"].get<double>(), k["target"].get<double>(), k["horizon"].get<double>());
  for (size_t i = 0; i < k["updates"].size(); ++i) {
    ctl.update(k["updates"][i][0].get<double>(), k["updates"][i][1].get<int64_t>());
    EXPECT_NEAR(ctl.value(), k["values"][i].get<double>(), 1e-12) << "update " << i;
  }
}

// ---- by hand -----------------------------------------------------------------------

// Three real tokens and one padding column holding garbage:
//   r = [0.1, -0.2, 1.0], V = [0.5, 0.4, 0.6], V after the last token = 0.
// gamma 1, lam 0.95:
//   t=2: delta = 1.0 + 0 - 0.6 = 0.4                A = 0.4
//   t=1: delta = -0.2 + 0.6 - 0.4 = 0.0             A = 0.0 + 0.95 * 0.4 = 0.38
//   t=0: delta = 0.1 + 0.4 - 0.5 = 0.0              A = 0.0 + 0.95 * 0.38 = 0.361
//   returns = A + V = [0.861, 0.78, 1.0]
// gamma 0.9, lam 1 (returns are then the discounted reward-to-go, whatever V is):
//   t=2: delta = 1.0 - 0.6 = 0.4                    A = 0.4
//   t=1: delta = -0.2 + 0.9 * 0.6 - 0.4 = -0.06     A = -0.06 + 0.9 * 0.4 = 0.30
//   t=0: delta = 0.1 + 0.9 * 0.4 - 0.5 = -0.04      A = -0.04 + 0.9 * 0.30 = 0.23
//   returns = [0.73, 0.70, 1.0] = [0.1 + 0.9 * 0.7, -0.2 + 0.9 * 1.0, 1.0]
TEST(PpoHand, GaeOnThreeTokens) {
  auto rewards = torch::tensor({{0.1f, -0.2f, 1.0f, 5.0f}});
  auto values = torch::tensor({{0.5f, 0.4f, 0.6f, 7.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 0.f}});
  auto a = gae(rewards, values, mask, 1.0, 0.95);
  EXPECT_TRUE(torch::allclose(a.advantages, torch::tensor({{0.361f, 0.38f, 0.4f, 0.f}}), 0, 1e-6)) << a.advantages;
  EXPECT_TRUE(torch::allclose(a.returns, torch::tensor({{0.861f, 0.78f, 1.0f, 0.f}}), 0, 1e-6)) << a.returns;
  auto b = gae(rewards, values, mask, 0.9, 1.0);
  EXPECT_TRUE(torch::allclose(b.advantages, torch::tensor({{0.23f, 0.30f, 0.4f, 0.f}}), 0, 1e-6)) << b.advantages;
  EXPECT_TRUE(torch::allclose(b.returns, torch::tensor({{0.73f, 0.70f, 1.0f, 0.f}}), 0, 1e-6)) << b.returns;
  EXPECT_FALSE(b.advantages.requires_grad());
}

TEST(PpoHand, WhitenIsMeanZeroVarianceOneOverRealTokensAndIgnoresPadding) {
  torch::manual_seed(0);
  auto x = torch::randn({3, 5}) * 4 + 2;
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 1.f, 1.f}, {1.f, 1.f, 0.f, 0.f, 0.f}, {1.f, 1.f, 1.f, 0.f, 0.f}});
  auto w = masked_whiten(x, mask);
  EXPECT_NEAR(item(masked_mean(w, mask)), 0.0, 1e-6);
  EXPECT_NEAR(item(masked_var(w, mask)), 1.0, 1e-5);
  EXPECT_EQ(item(w.masked_select(mask == 0).abs().sum()), 0.0);  // padding comes back as 0

  // Whatever padding holds, even inf or NaN, the real tokens' output is the same.
  auto garbage = x.masked_fill(mask == 0, std::numeric_limits<float>::quiet_NaN());
  garbage[1][3] = kInf;
  EXPECT_TRUE(torch::allclose(masked_whiten(garbage, mask), w));

  // shift_mean = false scales around the mean but keeps it (reward whitening keeps the sign of good rewards).
  auto kept = masked_whiten(x, mask, /*shift_mean=*/false);
  EXPECT_NEAR(item(masked_mean(kept, mask)), item(masked_mean(x, mask)), 1e-5);
  EXPECT_NEAR(item(masked_var(kept, mask)), 1.0, 1e-5);

  // Unbiased: var * n / (n - 1), n = 10 real tokens.
  EXPECT_NEAR(item(masked_var(x, mask, true)), item(masked_var(x, mask)) * 10.0 / 9.0, 1e-4);
  EXPECT_THROW(masked_whiten(x, torch::zeros({3, 5})), Error);
  auto one = torch::zeros({3, 5});
  one[0][0] = 1;
  EXPECT_NO_THROW(masked_whiten(x, one));
  EXPECT_THROW(masked_whiten(x, one, true, /*unbiased=*/true), Error);
}

// k3 is >= 0 on every token, where k1 is not. For logp - logp_ref = d, k1 = d and
// k3 = e^-d - 1 + d = d^2/2 - d^3/6 + d^4/24 ...: per token k3 is second order in d (checked as
// |k3 - d^2/2| <= |d|^3/5 for |d| <= 0.05, the /5 leaving room for the d^4 term). Both are unbiased:
// under samples from pi, E[k1] = sum p log(p/q) = KL exactly and E[k3] = sum p (q/p - 1) + KL = KL.
TEST(PpoHand, K3IsNonNegativeSecondOrderAndBothEstimatorsAreUnbiased) {
  torch::manual_seed(1);
  auto logp = -torch::rand({4, 64}) * 5, ref = logp + torch::randn({4, 64});
  auto k1 = kl_estimate(logp, ref, KlEstimator::K1), k3 = kl_estimate(logp, ref, KlEstimator::K3);
  EXPECT_TRUE((k3 >= 0).all().item<bool>());
  EXPECT_TRUE((k1 < 0).any().item<bool>());
  EXPECT_TRUE(torch::allclose(k1, logp - ref));

  auto d = torch::linspace(-0.05, 0.05, 101);
  auto small = kl_estimate(d, torch::zeros({101}), KlEstimator::K3);
  EXPECT_TRUE(((small - d.pow(2) / 2).abs() <= d.abs().pow(3) / 5 + 1e-9).all().item<bool>()) << small;

  // Expectations over full next-token distributions p (policy) and q (reference): a small and a large change.
  for (double scale : {0.05, 1.0}) {
    auto logits = torch::randn({3, 50}, torch::kFloat64);
    auto log_p = torch::log_softmax(logits, -1);
    auto log_q = torch::log_softmax(logits + scale * torch::randn({3, 50}, torch::kFloat64), -1);
    auto p = log_p.exp();
    auto kl = (p * (log_p - log_q)).sum(-1);
    auto e_k1 = (p * kl_estimate(log_p, log_q, KlEstimator::K1)).sum(-1);
    auto e_k3 = (p * kl_estimate(log_p, log_q, KlEstimator::K3)).sum(-1);
    // float32 estimates (kl_estimate computes in float32) against the float64 KL
    EXPECT_TRUE(torch::allclose(e_k1.to(torch::kFloat64), kl, 1e-4, 1e-6)) << scale << e_k1 << kl;
    EXPECT_TRUE(torch::allclose(e_k3.to(torch::kFloat64), kl, 1e-4, 1e-6)) << scale << e_k3 << kl;
  }
}

TEST(PpoHand, PerTokenRewardsPutTheScoreOnTheLastRealToken) {
  auto logprobs = torch::tensor({{-1.0f, -2.0f, -0.5f}, {-1.0f, -kInf, -kInf}});
  auto ref = torch::tensor({{-1.5f, -1.0f, -0.5f}, {-0.25f, 0.0f, 0.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f}, {1.f, 0.f, 0.f}});
  auto scores = torch::tensor({2.0f, -3.0f});
  auto out = per_token_rewards(logprobs, ref, scores, mask, 0.1);
  // k1 = logp - ref: row 0 [0.5, -1, 0], row 1 [-0.75]; r = -0.1 k1, + score at the last real token.
  EXPECT_TRUE(torch::allclose(out.kl, torch::tensor({{0.5f, -1.0f, 0.0f}, {-0.75f, 0.0f, 0.0f}}))) << out.kl;
  EXPECT_TRUE(torch::allclose(out.rewards, torch::tensor({{-0.05f, 0.1f, 2.0f}, {0.075f - 3.0f, 0.0f, 0.0f}})))
      << out.rewards;
  // Summed over the response: the score minus kl_coef times the sequence KL (objective/rlhf_reward).
  EXPECT_TRUE(torch::allclose(out.rewards.sum(1), scores - 0.1 * out.kl.sum(1)));
  EXPECT_THROW(per_token_rewards(logprobs, ref, scores, torch::tensor({{1.f, 1.f, 1.f}, {0.f, 0.f, 0.f}}), 0.1), Error);
}

TEST(PpoHand, MissingEosPenalty) {
  auto scores = torch::tensor({1.0f, 2.0f, -0.5f});
  auto has_eos = torch::tensor({true, false, false});
  EXPECT_TRUE(torch::equal(missing_eos_penalty(scores, has_eos, -1.0), torch::tensor({1.0f, -1.0f, -1.0f})));
  EXPECT_TRUE(torch::allclose(missing_eos_penalty(scores, has_eos, 1.0, EosPenaltyMode::Subtract),
                              torch::tensor({1.0f, 1.0f, -1.5f})));
}

TEST(PpoHand, PolicyLossAtRatioOneIsMinusMeanAdvantage) {
  auto logprobs = torch::tensor({{-1.0f, -2.0f, -0.3f}, {-0.7f, -1.1f, 0.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f}, {1.f, 1.f, 0.f}});
  auto A = torch::tensor({{0.5f, -1.0f, 2.0f}, {1.5f, -0.4f, 99.0f}});
  auto out = ppo_policy_loss(logprobs, logprobs.clone(), A, mask);
  EXPECT_NEAR(item(out.loss), -(0.5 - 1.0 + 2.0 + 1.5 - 0.4) / 5, 1e-6);
  EXPECT_EQ(item(out.clipfrac), 0.0);
  EXPECT_EQ(item(out.approxkl), 0.0);
  EXPECT_EQ(item(out.ratio_mean), 1.0);
  EXPECT_EQ(item(out.ratio_min), 1.0);
  EXPECT_EQ(item(out.ratio_max), 1.0);
}

// With clip 0.2, per token (rho, A): the loss term is max(-A rho, -A clip(rho)).
//   (1.5, +1): max(-1.5, -1.2) = -1.2  clipped      (0.5, +1): max(-0.5, -0.8) = -0.5  not clipped
//   (1.5, -1): max( 1.5,  1.2) =  1.5  not clipped  (0.5, -1): max( 0.5,  0.8) =  0.8  clipped
// loss = (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15, clipfrac = 2/4. A padded 5th token with a huge ratio
// is ignored.
TEST(PpoHand, PolicyLossClipsOnlyTheSideThatWouldOverstep) {
  auto rho = torch::tensor({{1.5f, 0.5f, 1.5f, 0.5f, 50.0f}});
  auto old_logprobs = torch::full({1, 5}, -2.0f);
  auto logprobs = old_logprobs + rho.log();
  auto A = torch::tensor({{1.0f, 1.0f, -1.0f, -1.0f, 1.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 1.f, 0.f}});
  auto out = ppo_policy_loss(logprobs, old_logprobs, A, mask, 0.2);
  EXPECT_NEAR(item(out.loss), 0.15, 1e-6);
  EXPECT_NEAR(item(out.clipfrac), 0.5, 1e-7);
  EXPECT_NEAR(item(out.ratio_max), 1.5, 1e-6);
  EXPECT_NEAR(item(out.ratio_min), 0.5, 1e-6);
  const double up = std::log(1.5), down = std::log(0.5);
  EXPECT_NEAR(item(out.approxkl), 0.5 * (2 * up * up + 2 * down * down) / 4, 1e-6);
}

// Old value 0, clip 0.2, return R:
//   V = 0.5, R = 1: (V - R)^2 = 0.25, clipped V = 0.2: 0.64 -> 0.64 clipped
//   V = 0.1, R = 1: inside the clip, both 0.81     -> 0.81 not clipped
//   V = -0.5, R = 0.3: 0.64, clipped V = -0.2: 0.25 -> 0.64 not clipped (moving away from R is not capped)
// loss = 0.5 * (0.64 + 0.81 + 0.64) / 3, clipfrac = 1/3.
TEST(PpoHand, ValueLossIsPessimisticAboutTheClip) {
  auto V = torch::tensor({{0.5f, 0.1f, -0.5f, 3.0f}});
  auto V_old = torch::zeros({1, 4});
  auto R = torch::tensor({{1.0f, 1.0f, 0.3f, -8.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 0.f}});
  auto out = ppo_value_loss(V, V_old, R, mask, 0.2);
  EXPECT_NEAR(item(out.loss), 0.5 * (0.64 + 0.81 + 0.64) / 3, 1e-6);
  EXPECT_NEAR(item(out.clipfrac), 1.0 / 3, 1e-7);
}

TEST(PpoHand, ExplainedVarianceAndEntropy) {
  torch::manual_seed(2);
  auto R = torch::randn({2, 6});
  auto mask = torch::tensor({{1.f, 1.f, 1.f, 1.f, 1.f, 1.f}, {1.f, 1.f, 1.f, 0.f, 0.f, 0.f}});
  EXPECT_NEAR(item(explained_variance(R, R, mask)), 1.0, 1e-6);
  EXPECT_NEAR(item(explained_variance(torch::full({2, 6}, item(masked_mean(R, mask))), R, mask)), 0.0, 1e-6);
  EXPECT_TRUE(std::isnan(item(explained_variance(R, torch::ones({2, 6}), mask))));

  // Uniform logits: log V nats; a one-hot-like row: about 0. Padding rows do not count.
  auto logits = torch::zeros({2, 3, 8});
  logits[1][0][2] = 100.0;
  auto m = torch::tensor({{1.f, 1.f, 0.f}, {1.f, 0.f, 0.f}});
  EXPECT_NEAR(item(entropy_from_logits(logits, m)), 2 * std::log(8.0) / 3, 1e-5);
  EXPECT_NEAR(item(entropy_from_logits(logits.slice(1, 0, 1), torch::ones({2, 1}))), std::log(8.0) / 2, 1e-5);
}

TEST(PpoHand, KlControllers) {
  // target 6, horizon 10000, beta 0.1:
  //   KL 9 -> e = 0.5 clipped to 0.2: beta *= 1 + 0.2 * 256 / 10000 = 1.00512
  //   KL 6.6 -> e = 0.1:              beta *= 1 + 0.1 * 1000 / 10000 = 1.01
  //   KL 0 -> e = -1 clipped to -0.2: beta *= 1 - 0.2 * 100 / 10000 = 0.998
  AdaptiveKlController adaptive(0.1, 6.0, 10000);
  adaptive.update(9.0, 256);
  EXPECT_NEAR(adaptive.value(), 0.1 * 1.00512, 1e-15);
  adaptive.update(6.6, 1000);
  EXPECT_NEAR(adaptive.value(), 0.1 * 1.00512 * 1.01, 1e-15);
  adaptive.update(0.0, 100);
  EXPECT_NEAR(adaptive.value(), 0.1 * 1.00512 * 1.01 * 0.998, 1e-15);
  adaptive.update(6.0, 5000);  // on target: unchanged
  EXPECT_NEAR(adaptive.value(), 0.1 * 1.00512 * 1.01 * 0.998, 1e-15);
  EXPECT_THROW(adaptive.update(std::nan(""), 1), Error);

  // The value is the whole state: restoring it resumes the same trajectory.
  AdaptiveKlController resumed(0.1, 6.0, 10000);
  resumed.load_value(adaptive.value());
  adaptive.update(7.5, 64);
  resumed.update(7.5, 64);
  EXPECT_EQ(resumed.value(), adaptive.value());

  FixedKlController fixed(0.05);
  KlController& ctl = fixed;
  ctl.update(100.0, 1000);
  EXPECT_EQ(ctl.value(), 0.05);

  EXPECT_THROW(AdaptiveKlController(0.1, 0.0, 10000), Error);
  EXPECT_THROW(AdaptiveKlController(0.1, 6.0, 0), Error);
  EXPECT_THROW(FixedKlController(-1.0), Error);
}

// ---- gradients -----------------------------------------------------------------------

TEST(PpoGrad, PolicyLossFlowsToLogprobsAndNotIntoPadding) {
  // Ratio 1, nothing clipped: d loss / d logp_t = -A_t / n on real tokens, 0 on padding, even
  // where padding holds -inf logprobs.
  auto A = torch::tensor({{0.5f, -1.0f, 2.0f}, {1.5f, -0.4f, 3.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f}, {1.f, 1.f, 0.f}});
  auto old = torch::tensor({{-1.0f, -2.0f, -0.3f}, {-0.7f, -1.1f, -kInf}});
  auto logprobs = old.clone().requires_grad_(true);
  ppo_policy_loss(logprobs, old, A, mask).loss.backward();
  auto want = torch::where(mask != 0, -A / 5, 0.0);
  EXPECT_TRUE(torch::allclose(logprobs.grad(), want, 1e-6, 1e-7)) << logprobs.grad();

  // Clipped tokens get no gradient: that is what the clip is for.
  auto rho = torch::tensor({{1.5f, 0.5f, 1.5f, 0.5f}});
  auto lp = rho.log().requires_grad_(true);
  auto out = ppo_policy_loss(lp, torch::zeros({1, 4}), torch::tensor({{1.f, 1.f, -1.f, -1.f}}), torch::ones({1, 4}));
  EXPECT_FALSE(out.clipfrac.requires_grad());
  out.loss.backward();
  auto g = lp.grad();
  EXPECT_EQ(g[0][0].item<float>(), 0.0f);
  EXPECT_EQ(g[0][3].item<float>(), 0.0f);
  EXPECT_NEAR(g[0][1].item<float>(), -0.5 / 4, 1e-7);  // -A rho / n
  EXPECT_NEAR(g[0][2].item<float>(), 1.5 / 4, 1e-6);
}

TEST(PpoGrad, ValueLossAndEntropyFlowToTheirInputs) {
  auto V = torch::tensor({{0.5f, 0.1f, 2.0f}}).requires_grad_(true);
  auto R = torch::tensor({{1.0f, 1.0f, 0.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 0.f}});
  ppo_value_loss(V, torch::zeros({1, 3}), R, mask, 0.2).loss.backward();
  // Token 0 is clipped (its error is the clipped one): no gradient. Token 1: 0.5 * 2 (V - R) / n.
  EXPECT_EQ(V.grad()[0][0].item<float>(), 0.0f);
  EXPECT_NEAR(V.grad()[0][1].item<float>(), (0.1 - 1.0) / 2, 1e-6);
  EXPECT_EQ(V.grad()[0][2].item<float>(), 0.0f);

  auto logits = torch::randn({2, 3, 5}, torch::requires_grad());
  entropy_from_logits(logits, torch::tensor({{1.f, 1.f, 0.f}, {1.f, 0.f, 0.f}})).backward();
  EXPECT_GT(logits.grad().slice(1, 0, 1).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(logits.grad()[0][2].abs().sum().item<double>(), 0.0);
}

TEST(PpoErrors, ShapesAreChecked) {
  auto x = torch::randn({2, 3}), mask = torch::ones({2, 3});
  EXPECT_THROW(masked_mean(x, torch::ones({2, 4})), Error);
  EXPECT_THROW(masked_mean(x, torch::ones({3})), Error);
  EXPECT_THROW(gae(x, torch::randn({2, 4}), mask), Error);
  EXPECT_THROW(per_token_rewards(x, x, torch::ones({3}), mask, 0.1), Error);
  EXPECT_THROW(ppo_policy_loss(x, x, x, mask, 0.0), Error);
  EXPECT_THROW(ppo_value_loss(x, x.t(), x, mask), Error);
  EXPECT_THROW(entropy_from_logits(x, mask), Error);
  EXPECT_THROW(kl_estimate(x, x.t(), KlEstimator::K3), Error);
  EXPECT_THROW(missing_eos_penalty(torch::ones({2}), torch::ones({3}), -1.0), Error);
}

TEST(PpoDevice, MatchesCpuOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto& j = fixture();
  const auto& r = j["rollout"];
  const auto& l = j["losses"];
  auto run = [&](torch::Device dev) {
    auto on = [&](const json& v) { return bt(v).to(dev); };
    auto mask = fixture_mask().to(dev);
    auto rw = per_token_rewards(on(r["logprobs"]), on(r["ref_logprobs"]), tensor(r["scores"], {-1}).to(dev), mask, 0.05,
                                KlEstimator::K3);
    auto g = gae(rw.rewards, on(r["values"]), mask, 1.0, 0.95);
    EXPECT_EQ(g.advantages.device().type(), dev.type());  // computed on the CPU, handed back
    auto A = masked_whiten(g.advantages, mask);
    auto pl = ppo_policy_loss(on(l["logprobs"]), on(l["old_logprobs"]), A, mask);
    auto vl = ppo_value_loss(on(l["values"]), on(l["old_values"]), g.returns, mask);
    auto stats = torch::stack({pl.loss, pl.clipfrac, pl.approxkl, pl.ratio_max, vl.loss, vl.clipfrac,
                               explained_variance(on(l["values"]), g.returns, mask)});
    return torch::cat({rw.rewards.flatten(), g.returns.flatten(), A.flatten(), stats}).cpu();
  };
  auto on_cuda = run(torch::kCUDA);
  EXPECT_TRUE(torch::allclose(on_cuda, run(torch::kCPU), 1e-5, 1e-5)) << on_cuda;
}
