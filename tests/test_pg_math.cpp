// The critic-free algorithms' math (src/losses/policy_gradient.h) against TRL's own code and
// OpenRLHF's formulas (tests/fixtures/pg_fixtures.json, written by scripts/gen_pg_fixtures.py),
// against values worked out by hand, and for gradients and batch splitting.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "fixture_util.h"
#include "losses/policy_gradient.h"

using namespace rlhf;
using nlohmann::json;
using test::expect_near;
using test::tensor;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

const json& fixture() {
  static const json j = test::load_fixture("pg_fixtures.json", "scripts/gen_pg_fixtures.py");
  return j;
}

// A fixture list whose nulls are NaN (unscorable rewards).
torch::Tensor with_nan(const json& values) {
  std::vector<float> v;
  for (const auto& x : values) v.push_back(x.is_null() ? kNaN : x.get<float>());
  return torch::tensor(v);
}

torch::Tensor rows(const json& values, int64_t n_rows) { return tensor(values, {n_rows, -1}); }

double item(const torch::Tensor& t) { return t.item<double>(); }

bool close(const torch::Tensor& got, const torch::Tensor& want, double atol = 1e-5) {
  return torch::allclose(got.to(torch::kFloat32), want.to(torch::kFloat32), 0, atol);
}

std::vector<int64_t> ints(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

PgAggregation aggregation_of(const std::string& loss_type) {
  if (loss_type == "grpo") return PgAggregation::Grpo;
  if (loss_type == "bnpo") return PgAggregation::Bnpo;
  if (loss_type == "dr_grpo") return PgAggregation::DrGrpo;
  return PgAggregation::Dapo;
}

}  // namespace

// ---- against TRL and OpenRLHF ---------------------------------------------------------

TEST(PgTRL, GrpoAdvantagesForEachRewardScaling) {
  const auto& g = fixture()["group"];
  auto rewards = with_nan(g["rewards"]);  // a group without variance, NaNs, a group with one scorable reward
  const int64_t G = g["G"];
  for (const auto& c : g["grpo"]) {
    const std::string scale = c["scale_rewards"];
    auto scaling = scale == "group"   ? RewardScaling::Group
                   : scale == "batch" ? RewardScaling::Batch
                                      : RewardScaling::None;
    expect_near(grpo_advantages(rewards, G, scaling), c["advantages"], "scale_rewards " + scale);
  }
}

TEST(PgTRL, RlooKlPenalizedRewardsAndLeaveOneOutAdvantages) {
  const auto& g = fixture()["group"];
  const auto& r = g["rloo"];
  auto rewards = with_nan(g["rewards"]);
  const int64_t G = g["G"], N = rewards.size(0);
  auto mask = rows(r["mask"], N), old_lp = rows(r["old_logprobs"], N), ref_lp = rows(r["ref_logprobs"], N);
  for (const auto& c : r["cases"]) {
    const double beta = c["beta"];
    const bool normalize = c["normalize"];
    const std::string what = "beta " + c["beta"].dump() + " normalize " + c["normalize"].dump();
    auto penalized = kl_penalized_scores(rewards, old_lp, ref_lp, mask, beta);
    auto want = with_nan(c["rewards"]);
    EXPECT_TRUE(torch::allclose(penalized, want, 0, 1e-5, /*equal_nan=*/true)) << what << penalized << want;
    expect_near(rloo_advantages(penalized, G, normalize), c["advantages"], what);
  }
}

TEST(PgTRL, ClippedLossForEachLossTypeMatchesGrpoTrainer) {
  const auto& l = fixture()["loss"];
  const int64_t B = l["B"];
  auto mask = rows(l["mask"], B), old_lp = rows(l["old_logprobs"], B), ref_lp = rows(l["ref_logprobs"], B);
  const int64_t tokens = mask.sum().item<int64_t>();
  for (const auto& c : l["grpo"]) {
    const bool per_token = c.contains("token_advantages");
    auto advantages = per_token ? rows(l["token_advantages"], B) : tensor(l["advantages"], {B});
    ClippedPgOptions o;
    o.aggregation = aggregation_of(c["loss_type"]);
    o.epsilon_low = c["epsilon_low"];
    o.epsilon_high = c["epsilon_high"];
    o.beta = c["beta"];
    o.max_completion_length = l["max_completion_length"];
    // TRL's normalisers of one micro-batch out of grad_accum: grpo, bnpo and dr_grpo divide by the
    // accumulation steps, which in this API's units is the whole window's count of sequences (grpo, dr_grpo)
    // or micro-batches (bnpo); dapo by the window's tokens.
    const int64_t accum = c["grad_accum"], items = c["num_items_in_batch"];
    if (accum > 1) {
      if (o.aggregation == PgAggregation::Dapo)
        o.normalizer = double(items);
      else if (o.aggregation == PgAggregation::Bnpo)
        o.normalizer = double(accum);
      else
        o.normalizer = double(accum * B);
    } else {
      ASSERT_EQ(items, tokens);  // dapo's default: this micro-batch's tokens
    }
    auto logprobs = rows(l["logprobs"], B).requires_grad_(true);
    auto out = clipped_pg_loss(logprobs, old_lp, advantages, mask, o, ref_lp);
    out.loss.backward();
    const std::string what = c["loss_type"].get<std::string>() + (per_token ? " (B, T) advantages" : "") + " eps " +
                             c["epsilon_low"].dump() + "/" + c["epsilon_high"].dump() + " beta " + c["beta"].dump() +
                             " accum " + c["grad_accum"].dump();
    expect_near(out.loss, c["loss"], what + " loss");
    expect_near(logprobs.grad(), c["grad"], what + " gradient");
    if (!c["kl"].is_null()) expect_near(out.kl, c["kl"], what + " kl");
    expect_near(out.clip_ratio_low, c["clip_ratio_low"], what + " clip_ratio/low_mean");
    expect_near(out.clip_ratio_high, c["clip_ratio_high"], what + " clip_ratio/high_mean");
    expect_near(out.clip_ratio_region, c["clip_ratio_region"], what + " clip_ratio/region_mean");
  }
}

TEST(PgTRL, RlooSequenceLossMatchesRlooTrainer) {
  const auto& l = fixture()["loss"];
  const int64_t B = l["B"];
  auto mask = rows(l["mask"], B), old_lp = rows(l["old_logprobs"], B);
  auto advantages = tensor(l["advantages"], {B});
  for (const auto& c : l["rloo"]) {
    auto logprobs = rows(l["logprobs"], B).requires_grad_(true);
    auto out = rloo_policy_loss(logprobs, old_lp, advantages, mask, c["epsilon_low"], c["epsilon_high"]);
    out.loss.backward();
    const std::string what = "rloo eps " + c["epsilon_low"].dump() + "/" + c["epsilon_high"].dump();
    expect_near(out.loss, c["loss"], what + " loss");
    expect_near(logprobs.grad(), c["grad"], what + " gradient");
    expect_near(out.clip_ratio_low, c["clip_ratio_low"], what + " clip low");
    expect_near(out.clip_ratio_high, c["clip_ratio_high"], what + " clip high");
    expect_near(out.clip_ratio_region, c["clip_ratio_region"], what + " clip region");
  }
}

// TRL orders the 2P completions [first of every prompt, second of every prompt]; this API groups
// them per prompt: TRL's row k is row 2k (k < P) or 2(k - P) + 1 here.
TEST(PgTRL, OnlineDpoPairsAndLossMatchOnlineDpoTrainer) {
  const auto& d = fixture()["online_dpo"];
  const int64_t P = d["P"], N = 2 * P;
  auto ours = [&](int64_t k) { return k < P ? 2 * k : 2 * (k - P) + 1; };
  std::vector<int64_t> order(N);  // row i here is TRL's row order[i]
  for (int64_t k = 0; k < N; ++k) order[ours(k)] = k;
  auto regroup = [&](const torch::Tensor& t) { return t.index_select(0, torch::tensor(order)); };
  auto mask = rows(d["mask"], N);
  auto keep = mask != 0;
  auto seq = [&](const json& lp) { return regroup(torch::where(keep, rows(lp, N), 0.0).sum(1)); };
  auto policy_logps = seq(d["logprobs"]), ref_logps = seq(d["ref_logprobs"]);
  auto scores = regroup(tensor(d["scores"], {N}));
  std::vector<int64_t> eos;
  for (bool b : d["contain_eos"]) eos.push_back(b);
  auto has_eos = regroup(torch::tensor(eos)).to(torch::kBool);

  for (const auto& c : d["cases"]) {
    const std::string what =
        c["loss_type"].get<std::string>() + " missing_eos_penalty " + c["missing_eos_penalty"].dump();
    auto s =
        c["missing_eos_penalty"].is_null()
            ? scores
            : missing_eos_penalty(scores, has_eos, c["missing_eos_penalty"].get<double>(), EosPenaltyMode::Subtract);
    EXPECT_TRUE(close(s, regroup(tensor(c["penalized_rewards"], {N})))) << what;

    auto pairs = preference_pairs(s, 2);
    std::vector<int64_t> chosen, rejected;
    for (int64_t k : c["chosen"].get<std::vector<int64_t>>()) chosen.push_back(ours(k));
    for (int64_t k : c["rejected"].get<std::vector<int64_t>>()) rejected.push_back(ours(k));
    EXPECT_EQ(ints(pairs.chosen), chosen) << what;  // prompt 3 ties (without the penalty): the first is chosen
    EXPECT_EQ(ints(pairs.rejected), rejected) << what;
    EXPECT_EQ(ints(pairs.group), (std::vector<int64_t>{0, 1, 2, 3, 4})) << what;

    const bool ipo = c["loss_type"] == "ipo";
    // TRL's OnlineDPOTrainer applies IPO to the summed log-ratios: lengths of 1 in dpo_loss's per-token form.
    auto out = online_dpo_loss(policy_logps, ref_logps, pairs, c["beta"].get<double>(),
                               ipo ? DpoLossType::IPO : DpoLossType::Sigmoid, ipo ? torch::ones({N}) : torch::Tensor());
    expect_near(out.losses, c["losses"], what + " losses");
    expect_near(out.losses.mean(), c["loss"], what + " loss");
  }
}

TEST(PgOpenRLHF, ReinforcePlusPlusReturnsAndGloballyWhitenedAdvantages) {
  const auto& j = fixture();
  const auto& l = j["loss"];
  const int64_t B = l["B"];
  auto mask = rows(l["mask"], B);
  for (const auto& c : j["reinforce_pp"]["cases"]) {
    const std::string what =
        c["estimator"].get<std::string>() + " kl_coef " + c["kl_coef"].dump() + " gamma " + c["gamma"].dump();
    auto out =
        reinforce_pp_advantages(rows(l["old_logprobs"], B), rows(l["ref_logprobs"], B),
                                tensor(j["reinforce_pp"]["scores"], {B}), mask, c["kl_coef"].get<double>(),
                                c["gamma"].get<double>(), c["estimator"] == "k3" ? KlEstimator::K3 : KlEstimator::K1);
    expect_near(out.returns, c["returns"], what + " returns");
    expect_near(out.advantages, c["advantages"], what + " advantages");
  }
}

// ---- by hand: advantages -------------------------------------------------------------

// Group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3) = 0.577350, so A = +-0.5 / 0.577450 = +-0.865876.
// Group [2, 2, 2, 2]: no variance, A = 0 whatever the scaling.
// Batch std of all eight: mean 1.25, squared deviations 0.0625 + 1.5625 + 1.5625 + 0.0625 + 4 * 0.5625 = 5.5,
// unbiased var 5.5 / 7 = 0.785714, std 0.886405: A = +-0.5 / 0.886505 = +-0.564012.
TEST(PgHand, GrpoAdvantages) {
  auto r = torch::tensor({1.f, 0.f, 0.f, 1.f, 2.f, 2.f, 2.f, 2.f});
  const float a = 0.865876f, b = 0.564012f;
  EXPECT_TRUE(close(grpo_advantages(r, 4), torch::tensor({a, -a, -a, a, 0.f, 0.f, 0.f, 0.f}))) << grpo_advantages(r, 4);
  EXPECT_TRUE(
      close(grpo_advantages(r, 4, RewardScaling::None), torch::tensor({.5f, -.5f, -.5f, .5f, 0.f, 0.f, 0.f, 0.f})));
  EXPECT_TRUE(close(grpo_advantages(r, 4, RewardScaling::Batch), torch::tensor({b, -b, -b, b, 0.f, 0.f, 0.f, 0.f})));
  // An unscorable completion is left out: [1, NaN, 3, 5] has mean 3, std 2, A = [-2, 0, 0, 2] / 2.0001.
  auto n = grpo_advantages(torch::tensor({1.f, kNaN, 3.f, 5.f}), 4);
  EXPECT_TRUE(close(n, torch::tensor({-0.99995f, 0.f, 0.f, 0.99995f}))) << n;
  // A group of all-NaN gives 0, never NaN.
  EXPECT_TRUE(close(grpo_advantages(torch::tensor({kNaN, kNaN, 1.f, 2.f}), 2),
                    torch::tensor({0.f, 0.f, -0.7070f, 0.7070f}), 1e-4));
}

// [1, 2, 3]: baselines (2 + 3) / 2, (1 + 3) / 2, (1 + 2) / 2 = 2.5, 2, 1.5, so A = -1.5, 0, 1.5
// (= G / (G - 1) times the reward minus the group mean). With a NaN the others are the scorable ones only.
TEST(PgHand, RlooAdvantages) {
  EXPECT_TRUE(close(rloo_advantages(torch::tensor({1.f, 2.f, 3.f}), 3), torch::tensor({-1.5f, 0.f, 1.5f})));
  EXPECT_TRUE(close(rloo_advantages(torch::tensor({1.f, kNaN, 3.f, 7.f, 7.f, kNaN}), 3),
                    torch::tensor({-2.f, 0.f, 2.f, 0.f, 0.f, 0.f})));
  // normalize: [-1.5, 0, 1.5] has mean 0 and unbiased std 1.5, so [-1, 0, 1] up to the 1e-4.
  EXPECT_TRUE(close(rloo_advantages(torch::tensor({1.f, 2.f, 3.f}), 3, true), torch::tensor({-1.f, 0.f, 1.f}), 1e-4));
}

// k1 summed over the real tokens: row 0 (logp - ref) = 0.5 - 1.0 = -0.5, row 1 0.25; beta 0.1.
TEST(PgHand, KlPenalizedScores) {
  auto logprobs = torch::tensor({{-1.0f, -2.0f, 4.0f}, {-1.0f, -kInf, -kInf}});
  auto ref = torch::tensor({{-1.5f, -1.0f, -9.0f}, {-1.25f, 0.0f, 0.0f}});
  auto mask = torch::tensor({{1.f, 1.f, 0.f}, {1.f, 0.f, 0.f}});
  auto out = kl_penalized_scores(torch::tensor({2.f, -1.f}), logprobs, ref, mask, 0.1);
  EXPECT_TRUE(close(out, torch::tensor({2.05f, -1.025f}))) << out;
  // k3 per token e^-d + d - 1: d = 0.5 -> 0.106531, d = -1 -> 0.718282, d = 0.25 -> 0.028801.
  auto k3 = kl_penalized_scores(torch::tensor({2.f, -1.f}), logprobs, ref, mask, 0.1, KlEstimator::K3);
  EXPECT_TRUE(close(k3, torch::tensor({2.f - 0.1f * (0.106531f + 0.718282f), -1.f - 0.1f * 0.028801f}))) << k3;
}

// Groups of 3: no variance; a signal; one scorable; none scorable; two different scorable.
TEST(PgHand, DynamicSamplingKeepsGroupsWithASignal) {
  auto r = torch::tensor({1.f, 1.f, 1.f, 0.f, 1.f, 0.f, kNaN, 2.f, kNaN, kNaN, kNaN, kNaN, 2.f, kNaN, 3.f});
  auto keep = groups_with_signal(r, 3);
  EXPECT_TRUE(torch::equal(keep, torch::tensor({false, true, false, false, true})));
  EXPECT_EQ(ints(group_rows(keep, 3)), (std::vector<int64_t>{3, 4, 5, 12, 13, 14}));
  EXPECT_EQ(group_rows(torch::zeros({2}, torch::kBool), 3).numel(), 0);
  // What is kept has nonzero advantages in every group; what is dropped had nothing to teach.
  auto a = grpo_advantages(r, 3).view({-1, 3});
  EXPECT_TRUE(torch::equal(a.abs().sum(1) > 0, keep));
}

// Scores [1, -1], no KL (logprobs = ref), gamma 0.5: rewards row 0 [0, 0, 1], row 1 [0, -1].
// Returns row 0 [0.25, 0.5, 1], row 1 [-0.5, -1]; whitened over all five tokens, not per row.
TEST(PgHand, ReinforcePlusPlus) {
  auto lp = torch::tensor({{-1.f, -2.f, -3.f}, {-1.f, -1.f, -kInf}});
  auto mask = torch::tensor({{1.f, 1.f, 1.f}, {1.f, 1.f, 0.f}});
  auto out = reinforce_pp_advantages(lp, lp, torch::tensor({1.f, -1.f}), mask, 0.1, 0.5);
  EXPECT_TRUE(close(out.returns, torch::tensor({{0.25f, 0.5f, 1.f}, {-0.5f, -1.f, 0.f}}))) << out.returns;
  EXPECT_NEAR(item(masked_mean(out.advantages, mask)), 0.0, 1e-6);
  EXPECT_NEAR(item(masked_var(out.advantages, mask)), 1.0, 1e-5);
  const float mean = 0.05f, inv_std = 1.0f / std::sqrt(float(item(masked_var(out.returns, mask))));
  EXPECT_TRUE(close(out.advantages[1][1], torch::tensor((-1.f - mean) * inv_std)));
  EXPECT_EQ(item(out.advantages[1][2]), 0.0);
  // With gamma 1 and a KL, the first token's return is the score minus kl_coef times the sequence's KL.
  auto ref = lp - torch::tensor({{0.5f, -0.25f, 1.f}, {0.1f, 0.2f, 0.f}});
  auto k = reinforce_pp_advantages(lp, ref, torch::tensor({1.f, -1.f}), mask, 0.1);
  EXPECT_TRUE(close(k.returns.select(1, 0), torch::tensor({1.f - 0.1f * 1.25f, -1.f - 0.1f * 0.3f}))) << k.returns;
}

// ---- by hand: losses -----------------------------------------------------------------

// On-policy (rho = 1, no old logprobs), the per-token loss is -A of its row. A = [1, -2], rows of 3 and 1
// tokens (padding -inf):
//   Grpo:   per-row means -1, 2, summed 1, / 2 rows = 0.5;   d/dlogp = -A / (len * B): -1/6 and 1
//   Bnpo, Dapo: (-3 + 2) / 4 tokens = -0.25;               d/dlogp = -A / 4: -0.25 and 0.5
//   DrGrpo (L = 5): -1 / (2 rows * 5) = -0.1;              d/dlogp = -A / 10: -0.1 and 0.2
// Grpo weighs the lone token of the short row 6x more than each token of the long one: its length bias.
TEST(PgHand, AggregationsWeighTokensAsTheirPapersSay) {
  auto mask = torch::tensor({{1.f, 1.f, 1.f}, {1.f, 0.f, 0.f}});
  auto A = torch::tensor({1.f, -2.f});
  struct Case {
    PgAggregation aggregation;
    float loss, g0, g1, count;
  };
  for (const auto& c :
       {Case{PgAggregation::Grpo, 0.5f, -1.f / 6, 1.f, 2.f}, Case{PgAggregation::Bnpo, -0.25f, -0.25f, 0.5f, 1.f},
        Case{PgAggregation::Dapo, -0.25f, -0.25f, 0.5f, 4.f}, Case{PgAggregation::DrGrpo, -0.1f, -0.1f, 0.2f, 2.f}}) {
    auto logprobs = torch::tensor({{-1.f, -2.f, -0.5f}, {-0.3f, -kInf, -kInf}}).requires_grad_(true);
    ClippedPgOptions o;
    o.aggregation = c.aggregation;
    o.max_completion_length = 5;
    auto out = clipped_pg_loss(logprobs, {}, A, mask, o);
    out.loss.backward();
    const auto what = "aggregation " + std::to_string(int(c.aggregation));
    EXPECT_NEAR(item(out.loss), c.loss, 1e-6) << what;
    EXPECT_EQ(item(out.count), c.count) << what;
    EXPECT_TRUE(close(logprobs.grad(), torch::tensor({{c.g0, c.g0, c.g0}, {c.g1, 0.f, 0.f}})))
        << what << logprobs.grad();
    EXPECT_EQ(item(out.clip_ratio_region), 0.0);
    EXPECT_FALSE(out.kl.defined());
  }
}

// Row 0 (A = +1): ratios 1.25, 1.1. Row 1 (A = -1): ratios 0.7, 0.9. Dapo over 4 tokens.
//   eps 0.2/0.2:  -min(1.25, 1.2) = -1.2 (clipped, no gradient), -1.1; -min(-0.7, -0.8) = 0.8 (clipped), 0.9
//                 loss (-1.2 - 1.1 + 0.8 + 0.9) / 4 = -0.15; clipped low 1/4, high 1/4
//   eps 0.2/0.28 (DAPO's clip-higher): 1.25 < 1.28 is no longer clipped: the token the policy made more
//                 likely keeps its gradient. loss (-1.25 - 1.1 + 0.8 + 0.9) / 4 = -0.1625; high 0
TEST(PgHand, ClipHigherWidensOnlyTheUpperBound) {
  auto old_lp = torch::log(torch::tensor({{0.1f, 0.5f}, {0.5f, 0.5f}}));
  auto ratio = torch::tensor({{1.25f, 1.1f}, {0.7f, 0.9f}});
  auto mask = torch::ones({2, 2});
  auto A = torch::tensor({1.f, -1.f});
  for (double high : {0.2, 0.28}) {
    auto logprobs = (old_lp + torch::log(ratio)).requires_grad_(true);
    ClippedPgOptions o;
    o.epsilon_high = high;
    auto out = clipped_pg_loss(logprobs, old_lp, A, mask, o);
    out.loss.backward();
    const bool wide = high > 0.2;
    EXPECT_NEAR(item(out.loss), wide ? -0.1625 : -0.15, 1e-6) << high;
    // d/dlogp of -rho A / 4 is -rho A / 4 where unclipped, 0 where clipped.
    auto want = torch::tensor({{wide ? -1.25f / 4 : 0.f, -1.1f / 4}, {0.f, 0.9f / 4}});
    EXPECT_TRUE(close(logprobs.grad(), want)) << high << logprobs.grad();
    EXPECT_NEAR(item(out.clip_ratio_low), 0.25, 1e-6);
    EXPECT_NEAR(item(out.clip_ratio_high), wide ? 0.0 : 0.25, 1e-6);
    EXPECT_NEAR(item(out.clip_ratio_region), wide ? 0.25 : 0.5, 1e-6);
  }
}

// A = 0 leaves only the KL term. logp - ref = d = [0.5, -0.3]: k3 = e^-d + d - 1 = [0.106531, 0.049859],
// beta 0.1, Dapo over 2 tokens: loss 0.1 * 0.156390 / 2 = 0.0078195; d k3 / d logp = 1 - e^-d, so the
// gradient is 0.1 * [0.393469, -0.349859] / 2, pulling logp back towards the reference from both sides.
TEST(PgHand, KlTermIsK3DifferentiatedThroughLogp) {
  auto ref = torch::tensor({{-1.5f, -0.7f}});
  auto logprobs = (ref + torch::tensor({{0.5f, -0.3f}})).requires_grad_(true);
  ClippedPgOptions o;
  o.beta = 0.1;
  auto out = clipped_pg_loss(logprobs, {}, torch::zeros({1}), torch::ones({1, 2}), o, ref);
  out.loss.backward();
  EXPECT_NEAR(item(out.loss), 0.0078195, 1e-6);
  EXPECT_NEAR(item(out.kl), 0.078195, 1e-6);
  EXPECT_TRUE(close(logprobs.grad(), torch::tensor({{0.0196735f, -0.0174929f}}))) << logprobs.grad();
  // beta 0 with a reference: no KL in the loss, but still measured.
  o.beta = 0.0;
  auto off = clipped_pg_loss(logprobs, {}, torch::zeros({1}), torch::ones({1, 2}), o, ref);
  EXPECT_EQ(item(off.loss), 0.0);
  EXPECT_NEAR(item(off.kl), 0.078195, 1e-6);
}

// A micro-batch whose completions were all masked out (truncated ones, say) adds nothing: loss, gradient and
// statistics 0, never NaN, while Grpo and DrGrpo still count its sequences (TRL clamps the token counts to 1).
TEST(PgHand, AnAllPaddingMicroBatchAddsNothing) {
  auto mask = torch::zeros({2, 3});
  for (auto agg : {PgAggregation::Grpo, PgAggregation::Bnpo, PgAggregation::DrGrpo, PgAggregation::Dapo}) {
    auto logprobs = torch::full({2, 3}, -kInf).requires_grad_(true);
    ClippedPgOptions o;
    o.aggregation = agg;
    o.beta = 0.1;
    o.max_completion_length = 3;
    auto out = clipped_pg_loss(logprobs, torch::full({2, 3}, -kInf), torch::ones({2}), mask, o, torch::zeros({2, 3}));
    out.loss.backward();
    const auto what = "aggregation " + std::to_string(int(agg));
    EXPECT_EQ(item(out.loss), 0.0) << what;
    EXPECT_EQ(item(logprobs.grad().abs().sum()), 0.0) << what;
    EXPECT_EQ(item(out.kl), 0.0) << what;
    EXPECT_EQ(item(out.clip_ratio_region), 0.0) << what;
    const bool per_sequence = agg == PgAggregation::Grpo || agg == PgAggregation::DrGrpo;
    EXPECT_EQ(item(out.count), per_sequence ? 2.0 : agg == PgAggregation::Bnpo ? 1.0 : 0.0) << what;
  }
}

// The normaliser contract: micro-batches given the whole batch's count (the sum of their counts) add up to the
// whole batch's loss and gradient, for every aggregation that has a global form.
TEST(PgGrad, MicroBatchesWithTheGlobalNormalizerAddUpToTheWholeBatch) {
  torch::manual_seed(3);
  const int64_t B = 4, T = 5;
  auto mask = torch::tensor(
      {{1.f, 1.f, 1.f, 1.f, 1.f}, {1.f, 1.f, 0.f, 0.f, 0.f}, {1.f, 0.f, 0.f, 0.f, 0.f}, {1.f, 1.f, 1.f, 1.f, 0.f}});
  auto old_lp = -torch::rand({B, T}) * 2, ref = old_lp + 0.3 * torch::randn({B, T});
  auto base = old_lp + 0.3 * torch::randn({B, T});
  auto A = torch::randn({B});
  for (auto agg : {PgAggregation::Grpo, PgAggregation::DrGrpo, PgAggregation::Dapo}) {
    ClippedPgOptions o;
    o.aggregation = agg;
    o.beta = 0.05;
    o.max_completion_length = T;
    o.epsilon_high = 0.28;
    auto whole_lp = base.clone().requires_grad_(true);
    auto whole = clipped_pg_loss(whole_lp, old_lp, A, mask, o, ref);
    whole.loss.backward();

    auto lp = base.clone().requires_grad_(true);
    double count = 0;
    for (int64_t h = 0; h < 2; ++h)
      count += item(clipped_pg_loss(base.slice(0, 2 * h, 2 * h + 2), old_lp.slice(0, 2 * h, 2 * h + 2),
                                    A.slice(0, 2 * h, 2 * h + 2), mask.slice(0, 2 * h, 2 * h + 2), o,
                                    ref.slice(0, 2 * h, 2 * h + 2))
                        .count);
    EXPECT_EQ(count, item(whole.count));
    o.normalizer = count;
    torch::Tensor total = torch::zeros({});
    for (int64_t h = 0; h < 2; ++h) {
      auto rows_h = [&](const torch::Tensor& t) { return t.slice(0, 2 * h, 2 * h + 2); };
      total = total + clipped_pg_loss(rows_h(lp), rows_h(old_lp), rows_h(A), rows_h(mask), o, rows_h(ref)).loss;
    }
    total.backward();
    const auto what = "aggregation " + std::to_string(int(agg));
    EXPECT_NEAR(item(total), item(whole.loss), 1e-6) << what;
    EXPECT_TRUE(close(lp.grad(), whole_lp.grad(), 1e-7)) << what;
    // normalizer 1 is the plain sum: the loss times its count.
    o.normalizer = 1.0;
    EXPECT_NEAR(item(clipped_pg_loss(base, old_lp, A, mask, o, ref).loss), item(whole.loss * whole.count), 1e-5)
        << what;
  }
}

// One sequence of two real tokens, each moved by +0.1 from the old policy: one ratio for the sequence,
// exp(0.2) = 1.221403. A = 2: with eps_high 0.2 it is clipped to 1.2 (loss -2.4, no gradient); with 0.3 the
// loss is -2 * 1.221403 = -2.442806 and every real token's gradient is that too (d rho / d logp_t = rho).
TEST(PgHand, RlooLossClipsTheSequenceRatio) {
  auto old_lp = torch::tensor({{-1.f, -2.f, -kInf}});
  auto mask = torch::tensor({{1.f, 1.f, 0.f}});
  for (double high : {0.2, 0.3}) {
    auto logprobs = torch::tensor({{-0.9f, -1.9f, -kInf}}).requires_grad_(true);
    auto out = rloo_policy_loss(logprobs, old_lp, torch::tensor({2.f}), mask, 0.2, high);
    out.loss.backward();
    const bool clipped = high < 0.25;
    EXPECT_NEAR(item(out.loss), clipped ? -2.4 : -2.442806, 1e-5) << high;
    const float g = clipped ? 0.f : -2.442806f;
    EXPECT_TRUE(close(logprobs.grad(), torch::tensor({{g, g, 0.f}}))) << high << logprobs.grad();
    EXPECT_EQ(item(out.clip_ratio_high), clipped ? 1.0 : 0.0);
    EXPECT_EQ(item(out.count), 1.0);
  }
  // On-policy and with a normaliser: -A summed / normaliser.
  auto out = rloo_policy_loss(torch::tensor({{-0.9f, -1.9f, -kInf}}), {}, torch::tensor({2.f}), mask, 0.2, 0.2, 4.0);
  EXPECT_NEAR(item(out.loss), -0.5, 1e-6);
}

// ---- by hand: online DPO and best-of-n -----------------------------------------------

// Groups of 3: [1, 3, 3] (chosen the first 3, rejected 1), [2, 2, 2] (a tie), [NaN, 1, NaN] (one scorable: no
// pair), [0, NaN, -1].
TEST(PgHand, PreferencePairsBestAgainstWorstWithExplicitTies) {
  auto s = torch::tensor({1.f, 3.f, 3.f, 2.f, 2.f, 2.f, kNaN, 1.f, kNaN, 0.f, kNaN, -1.f});
  auto first = preference_pairs(s, 3);
  EXPECT_EQ(ints(first.chosen), (std::vector<int64_t>{1, 3, 9}));
  EXPECT_EQ(ints(first.rejected), (std::vector<int64_t>{0, 5, 11}));  // the tie: first chosen, last rejected
  EXPECT_EQ(ints(first.group), (std::vector<int64_t>{0, 1, 3}));
  auto skip = preference_pairs(s, 3, TiePolicy::Skip);
  EXPECT_EQ(ints(skip.chosen), (std::vector<int64_t>{1, 9}));
  EXPECT_EQ(ints(skip.rejected), (std::vector<int64_t>{0, 11}));
  EXPECT_EQ(ints(skip.group), (std::vector<int64_t>{0, 3}));
  // G = 2, as TRL: first >= second makes the first chosen.
  auto two = preference_pairs(torch::tensor({0.5f, 0.5f, 0.1f, 0.2f}), 2);
  EXPECT_EQ(ints(two.chosen), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(ints(two.rejected), (std::vector<int64_t>{1, 2}));
}

// One pair: policy logps chosen -1, rejected -2, reference -1.5 for both: d = 1, beta 0.1,
// loss -log sigmoid(0.1) = 0.644397.
TEST(PgHand, OnlineDpoLossIndexesThePairs) {
  PreferencePairs pairs{torch::tensor({2}, torch::kInt64), torch::tensor({0}, torch::kInt64),
                        torch::tensor({0}, torch::kInt64)};
  auto policy = torch::tensor({-2.f, 7.f, -1.f}).requires_grad_(true);
  auto out = online_dpo_loss(policy, torch::tensor({-1.5f, 0.f, -1.5f}), pairs, 0.1);
  EXPECT_NEAR(item(out.losses[0]), 0.644397, 1e-6);
  out.losses.mean().backward();
  // d/d(chosen) = -beta * sigmoid(-0.1) = -0.047502, d/d(rejected) = +0.047502, nothing for the unpaired row.
  EXPECT_TRUE(close(policy.grad(), torch::tensor({0.047502f, 0.f, -0.047502f}))) << policy.grad();
  PreferencePairs none{torch::zeros({0}, torch::kInt64), torch::zeros({0}, torch::kInt64),
                       torch::zeros({0}, torch::kInt64)};
  EXPECT_THROW(online_dpo_loss(policy, policy, none, 0.1), Error);
  PreferencePairs outside{torch::tensor({3}, torch::kInt64), torch::tensor({0}, torch::kInt64),
                          torch::tensor({0}, torch::kInt64)};
  EXPECT_THROW(online_dpo_loss(policy, policy, outside, 0.1), Error);
  EXPECT_THROW(online_dpo_loss(policy, policy, pairs, 0.1, DpoLossType::IPO), Error);  // IPO needs lengths
}

TEST(PgHand, BestOfNPicksTheFirstBestAndRejectsBelowTheThreshold) {
  auto s = torch::tensor({1.f, 3.f, 3.f, kNaN, kNaN, kNaN, 0.2f, 0.1f, 0.f, 5.f, kNaN, 4.f});
  EXPECT_EQ(ints(best_of_n(s, 3)), (std::vector<int64_t>{1, 6, 9}));
  EXPECT_EQ(ints(best_of_n(s, 3, 0.5)), (std::vector<int64_t>{1, 9}));
  EXPECT_EQ(ints(best_of_n(s, 3, 3.0)), (std::vector<int64_t>{1, 9}));  // the threshold is inclusive
  EXPECT_EQ(best_of_n(s, 3, 10.0).numel(), 0);
}

// ---- errors and devices ------------------------------------------------------------------

TEST(PgErrors, ShapesAndSettingsAreChecked) {
  auto r = torch::randn({6});
  EXPECT_THROW(grpo_advantages(r, 4), Error);  // 6 is not a multiple of 4
  EXPECT_THROW(grpo_advantages(r, 1), Error);  // a group of one has no baseline
  EXPECT_THROW(grpo_advantages(r.view({2, 3}), 3), Error);
  EXPECT_THROW(rloo_advantages(r, 4), Error);
  EXPECT_THROW(groups_with_signal(r, 5), Error);
  EXPECT_THROW(group_rows(torch::ones({2, 2}), 2), Error);
  EXPECT_THROW(preference_pairs(r, 4), Error);
  EXPECT_THROW(best_of_n(r, 4), Error);
  EXPECT_THROW(best_of_n(r, 3, std::nan("")), Error);

  auto x = torch::randn({2, 3}), mask = torch::ones({2, 3});
  EXPECT_THROW(kl_penalized_scores(torch::ones({3}), x, x, mask, 0.1), Error);
  EXPECT_THROW(kl_penalized_scores(torch::ones({2}), x, x.t(), mask, 0.1), Error);
  EXPECT_THROW(reinforce_pp_advantages(x, x, torch::ones({2}), mask, 0.1, 1.5), Error);
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({3}), mask), Error);
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({2, 4}), mask), Error);
  EXPECT_THROW(clipped_pg_loss(x, x.t(), torch::ones({2}), mask), Error);
  ClippedPgOptions kl;
  kl.beta = 0.1;
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({2}), mask, kl), Error);  // KL without a reference
  ClippedPgOptions dr;
  dr.aggregation = PgAggregation::DrGrpo;
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({2}), mask, dr), Error);  // no max_completion_length
  ClippedPgOptions eps;
  eps.epsilon_low = 0.0;
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({2}), mask, eps), Error);
  ClippedPgOptions norm;
  norm.normalizer = 0.0;
  EXPECT_THROW(clipped_pg_loss(x, x, torch::ones({2}), mask, norm), Error);
  EXPECT_THROW(rloo_policy_loss(x, x, torch::ones({2, 3}), mask), Error);
  EXPECT_THROW(rloo_policy_loss(x, x, torch::ones({2}), mask, 0.2, -0.1), Error);
}

TEST(PgDevice, MatchesCpuOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto& l = fixture()["loss"];
  const int64_t B = l["B"];
  auto run = [&](torch::Device dev) {
    auto on = [&](const json& v) { return rows(v, B).to(dev); };
    auto mask = on(l["mask"]);
    auto rewards = torch::tensor({1.f, 0.f, kNaN, 1.f, 2.f, 3.f}).to(dev);
    auto grpo = grpo_advantages(rewards, 3);
    auto rloo = rloo_advantages(kl_penalized_scores(rewards, on(l["old_logprobs"]), on(l["ref_logprobs"]), mask, 0.05),
                                3, true);
    auto rpp = reinforce_pp_advantages(on(l["old_logprobs"]), on(l["ref_logprobs"]), grpo, mask, 0.05);
    auto logprobs = on(l["logprobs"]).requires_grad_(true);
    ClippedPgOptions o;
    o.beta = 0.04;
    o.epsilon_high = 0.28;
    auto pg = clipped_pg_loss(logprobs, on(l["old_logprobs"]), grpo, mask, o, on(l["ref_logprobs"]));
    auto rl = rloo_policy_loss(logprobs, on(l["old_logprobs"]), rloo, mask);
    (pg.loss + rl.loss).backward();
    auto keep = groups_with_signal(rewards, 3).to(torch::kFloat32);
    auto stats = torch::stack({pg.loss, pg.kl, pg.clip_ratio_region, rl.loss, rl.clip_ratio_region});
    EXPECT_EQ(pg.loss.device().type(), dev.type());
    return torch::cat({grpo, rloo, rpp.advantages.flatten(), logprobs.grad().flatten(), keep, stats.detach()}).cpu();
  };
  auto on_cuda = run(torch::kCUDA);
  EXPECT_TRUE(torch::allclose(on_cuda, run(torch::kCPU), 1e-5, 1e-5)) << on_cuda;
}
