// The training losses against TRL 1.16 / transformers numbers (tests/fixtures/loss_fixtures.json,
// written by scripts/gen_loss_fixtures.py), against hand-computed values, and for gradients.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "fixture_util.h"
#include "losses/losses.h"

using namespace rlhf;
using nlohmann::json;

namespace {

constexpr double kTol = 1e-5;

using test::expect_near;
using test::tensor;

const json& fixture() {
  static const json j = test::load_fixture("loss_fixtures.json", "scripts/gen_loss_fixtures.py");
  return j;
}

torch::Tensor rows(const torch::Tensor& t, int64_t from, int64_t to) { return t.slice(0, from, to); }

struct DpoBatch {
  torch::Tensor policy_logits, ref_logits;  // (2B, T, V) rows [chosen; rejected]
  torch::Tensor input_ids, loss_mask;       // (2B, T)
  int64_t B;
};

DpoBatch dpo_batch() {
  const auto& j = fixture();
  const int64_t B = j["B"], T = j["T"], V = j["V"];
  const auto& d = j["dpo"];
  return {tensor(d["policy_logits"], {2 * B, T, V}), tensor(d["ref_logits"], {2 * B, T, V}),
          tensor(d["input_ids"], {2 * B, T}, torch::kLong), tensor(d["loss_mask"], {2 * B, T}), B};
}

}  // namespace

// ---- against TRL 1.16 / transformers ----------------------------------------------------

TEST(LossTRL, TokenAndSequenceLogprobs) {
  const auto& j = fixture();
  const int64_t B = j["B"], T = j["T"], V = j["V"];
  const auto& s = j["sft"];
  auto logits = tensor(s["logits"], {B, T, V});
  auto ids = tensor(s["input_ids"], {B, T}, torch::kLong);
  auto mask = tensor(s["loss_mask"], {B, T});
  auto lp = token_logprobs(logits, ids);
  EXPECT_EQ(lp.sizes(), (std::vector<int64_t>{B, T - 1}));
  expect_near(lp, s["token_logprobs"], "token_logprobs");
  expect_near(sequence_logprobs(logits, ids, mask), s["sequence_logprobs"], "sequence_logprobs");

  auto d = dpo_batch();
  expect_near(sequence_logprobs(d.policy_logits, d.input_ids, d.loss_mask), j["dpo"]["policy_logps"], "policy logps");
  expect_near(sequence_logprobs(d.ref_logits, d.input_ids, d.loss_mask), j["dpo"]["ref_logps"], "ref logps");
}

TEST(LossTRL, SftLossMasksPromptAndPadding) {
  const auto& j = fixture();
  const int64_t B = j["B"], T = j["T"], V = j["V"];
  const auto& s = j["sft"];
  auto loss = sft_loss(tensor(s["logits"], {B, T, V}), tensor(s["input_ids"], {B, T}, torch::kLong),
                       tensor(s["loss_mask"], {B, T}));
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_NEAR(loss.item<double>(), s["loss"].get<double>(), kTol);
}

TEST(LossTRL, RewardLossWithAndWithoutMargin) {
  const auto& r = fixture()["reward"];
  auto chosen = tensor(r["rewards_chosen"], {-1}), rejected = tensor(r["rewards_rejected"], {-1});
  EXPECT_NEAR(reward_loss(chosen, rejected).item<double>(), r["loss"].get<double>(), kTol);
  EXPECT_NEAR(reward_loss(chosen, rejected, tensor(r["margin"], {-1})).item<double>(), r["loss_margin"].get<double>(),
              kTol);
}

// Every case (sigmoid at beta 0.1 and 0.5, label smoothing 0 and 0.1, IPO at beta 0.1 and 0.5),
// from TRL's logps and end to end from the logits.
TEST(LossTRL, DpoAndIpoLossesAndRewards) {
  const auto& j = fixture();
  auto d = dpo_batch();
  const int64_t B = d.B;
  auto policy = tensor(j["dpo"]["policy_logps"], {2 * B}), ref = tensor(j["dpo"]["ref_logps"], {2 * B});
  auto from_logits_policy = sequence_logprobs(d.policy_logits, d.input_ids, d.loss_mask);
  auto from_logits_ref = sequence_logprobs(d.ref_logits, d.input_ids, d.loss_mask);
  auto lengths = d.loss_mask.sum(1);  // (2B)

  for (const auto& c : j["dpo"]["cases"]) {
    const std::string name = c["loss_type"].get<std::string>() + " beta " + c["beta"].dump() + " ls " +
                             c["label_smoothing"].dump();
    auto type = c["loss_type"] == "ipo" ? DpoLossType::IPO : DpoLossType::Sigmoid;
    for (bool end_to_end : {false, true}) {
      const auto& p = end_to_end ? from_logits_policy : policy;
      const auto& r = end_to_end ? from_logits_ref : ref;
      auto out = dpo_loss(rows(p, 0, B), rows(p, B, 2 * B), rows(r, 0, B), rows(r, B, 2 * B), c["beta"].get<double>(),
                          c["label_smoothing"].get<double>(), type, rows(lengths, 0, B), rows(lengths, B, 2 * B));
      const std::string what = name + (end_to_end ? " (from logits)" : "");
      expect_near(out.losses, c["losses"], what + " losses");
      EXPECT_NEAR(out.losses.mean().item<double>(), c["loss"].get<double>(), kTol) << what;
      expect_near(out.chosen_rewards, c["chosen_rewards"], what + " chosen rewards");
      expect_near(out.rejected_rewards, c["rejected_rewards"], what + " rejected rewards");
    }
  }
}

// ---- hand-checkable values ------------------------------------------------------------

TEST(LossHand, RewardLossOfEqualRewardsIsLog2) {
  auto r = torch::tensor({0.3f, -1.2f, 4.0f});
  EXPECT_NEAR(reward_loss(r, r).item<double>(), std::log(2.0), 1e-6);
  // A margin equal to the reward gap brings it back to log 2.
  EXPECT_NEAR(reward_loss(r + 1.5, r, torch::full({3}, 1.5)).item<double>(), std::log(2.0), 1e-6);
}

TEST(LossHand, UniformModelScoresEveryTokenLogV) {
  const int64_t V = 13;
  auto logits = torch::zeros({2, 6, V});
  auto ids = torch::randint(V, {2, 6}, torch::kLong);
  auto mask = torch::tensor({0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1}, torch::kFloat32).reshape({2, 6});
  auto seq = sequence_logprobs(logits, ids, mask);
  EXPECT_NEAR(seq[0].item<double>(), -3 * std::log(double(V)), 1e-5);
  EXPECT_NEAR(seq[1].item<double>(), -5 * std::log(double(V)), 1e-5);
  EXPECT_NEAR(sft_loss(logits, ids, mask).item<double>(), std::log(double(V)), 1e-6);
}

TEST(LossHand, DpoAtTheReferenceIsLog2AndIpoIsItsMargin) {
  auto logps = torch::tensor({-3.0f, -7.5f});
  auto out = dpo_loss(logps, logps - 1, logps, logps - 1, 0.1);
  EXPECT_NEAR(out.losses[0].item<double>(), std::log(2.0), 1e-6);
  EXPECT_NEAR(out.chosen_rewards.abs().max().item<double>(), 0.0, 1e-7);
  // Label smoothing leaves log 2 alone: both terms are log sigmoid(0).
  EXPECT_NEAR(dpo_loss(logps, logps - 1, logps, logps - 1, 0.1, 0.2).losses[1].item<double>(), std::log(2.0), 1e-6);
  auto ipo = dpo_loss(logps, logps - 1, logps, logps - 1, 0.25, 0.0, DpoLossType::IPO, torch::tensor({3.0f, 4.0f}),
                      torch::tensor({5.0f, 0.0f}));
  EXPECT_NEAR(ipo.losses[0].item<double>(), 4.0, 1e-6);  // (0 - 1/(2*0.25))^2
}

TEST(LossHand, MaskedPositionsDoNotMatter) {
  auto logits = torch::randn({1, 5, 7});
  auto ids = torch::tensor({{3, 1, 4, 1, 5}}, torch::kLong);
  auto mask = torch::tensor({{0.f, 0.f, 1.f, 1.f, 0.f}});  // completion = tokens 2 and 3
  auto before = sft_loss(logits, ids, mask);
  // Logits at position 0 and 3 score tokens 1 and 4, which are masked; -inf there must not leak NaN.
  auto edited = logits.clone();
  edited.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
  edited.select(1, 3).mul_(5.0);
  EXPECT_NEAR(sft_loss(edited, ids, mask).item<double>(), before.item<double>(), 1e-6);
  EXPECT_NEAR(sequence_logprobs(edited, ids, mask).item<double>(), sequence_logprobs(logits, ids, mask).item<double>(),
              1e-6);
  // All masked: 0, not NaN (TRL clamps the token count).
  EXPECT_EQ(sft_loss(logits, ids, torch::zeros({1, 5})).item<double>(), 0.0);
}

TEST(LossHand, HalfPrecisionLogitsAreScoredInFloat32) {
  auto logits = torch::randn({2, 4, 9});
  auto ids = torch::randint(9, {2, 4}, torch::kLong);
  auto lp32 = token_logprobs(logits, ids);
  auto lp16 = token_logprobs(logits.to(torch::kBFloat16), ids);
  EXPECT_EQ(lp16.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(lp16, lp32, 0.0, 0.1));  // only the bf16 rounding of the inputs
}

// ---- gradients -----------------------------------------------------------------------

TEST(LossGrad, EveryLossBackpropagatesToItsInputs) {
  auto ids = torch::randint(11, {4, 6}, torch::kLong);
  auto mask = torch::tensor({0, 1, 1, 1, 0, 0}, torch::kFloat32).repeat({4, 1});

  auto logits = torch::randn({4, 6, 11}, torch::requires_grad());
  sft_loss(logits, ids, mask).backward();
  ASSERT_TRUE(logits.grad().defined());
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);
  // Logits whose next token is outside the completion (tokens 4, 5; the last position scores
  // nothing) get no gradient.
  EXPECT_EQ(logits.grad().slice(1, 3).abs().sum().item<double>(), 0.0);

  for (auto type : {DpoLossType::Sigmoid, DpoLossType::IPO}) {
    auto policy_logits = torch::randn({4, 6, 11}, torch::requires_grad());
    auto ref = sequence_logprobs(torch::randn({4, 6, 11}), ids, mask);
    auto policy = sequence_logprobs(policy_logits, ids, mask);
    auto lengths = mask.sum(1);
    auto out = dpo_loss(policy.slice(0, 0, 2), policy.slice(0, 2, 4), ref.slice(0, 0, 2), ref.slice(0, 2, 4), 0.1, 0.1,
                        type, lengths.slice(0, 0, 2), lengths.slice(0, 2, 4));
    EXPECT_FALSE(out.chosen_rewards.requires_grad());
    EXPECT_FALSE(out.rejected_rewards.requires_grad());
    out.losses.mean().backward();
    EXPECT_GT(policy_logits.grad().abs().sum().item<double>(), 0.0);
  }

  auto rc = torch::randn({5}, torch::requires_grad()), rr = torch::randn({5}, torch::requires_grad());
  reward_loss(rc, rr, torch::rand({5})).backward();
  // d/d rc of -log sigmoid(rc - rr - m) is -sigmoid(-(rc - rr - m)) / B < 0; rr gets the opposite.
  EXPECT_TRUE((rc.grad() < 0).all().item<bool>());
  EXPECT_TRUE(torch::allclose(rr.grad(), -rc.grad()));
}

TEST(LossErrors, ShapeMismatchesAndMissingIpoLengthsThrow) {
  auto logits = torch::randn({2, 5, 7});
  auto ids = torch::randint(7, {2, 5}, torch::kLong);
  EXPECT_THROW(token_logprobs(logits, ids.slice(1, 0, 4)), Error);
  EXPECT_THROW(token_logprobs(logits.select(0, 0), ids), Error);
  EXPECT_THROW(sequence_logprobs(logits, ids, torch::ones({2, 4})), Error);
  EXPECT_THROW(reward_loss(torch::ones({3}), torch::ones({2})), Error);
  auto lp = torch::randn({2});
  EXPECT_THROW(dpo_loss(lp, lp, lp, lp, 0.1, 0.0, DpoLossType::IPO), Error);
  EXPECT_THROW(dpo_loss(lp, lp, lp, lp, 0.0), Error);
}

TEST(LossDevice, MatchesCpuOnCuda) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  auto d = dpo_batch();
  const int64_t B = d.B;
  auto lengths = d.loss_mask.sum(1);
  auto run = [&](torch::Device dev) {
    auto p = sequence_logprobs(d.policy_logits.to(dev), d.input_ids.to(dev), d.loss_mask.to(dev));
    auto r = sequence_logprobs(d.ref_logits.to(dev), d.input_ids.to(dev), d.loss_mask.to(dev));
    auto l = lengths.to(dev);
    auto ipo = dpo_loss(rows(p, 0, B), rows(p, B, 2 * B), rows(r, 0, B), rows(r, B, 2 * B), 0.1, 0.0,
                        DpoLossType::IPO, rows(l, 0, B), rows(l, B, 2 * B));
    auto sft = sft_loss(d.policy_logits.to(dev), d.input_ids.to(dev), d.loss_mask.to(dev));
    return torch::cat({p, ipo.losses, sft.reshape({1})}).cpu();
  };
  auto on_cuda = run(torch::kCUDA);
  EXPECT_TRUE(torch::allclose(on_cuda, run(torch::kCPU), 1e-5, 1e-5)) << on_cuda;
}
