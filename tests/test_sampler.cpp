// Sampler chain stages against hand-computed distributions.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "generate/sampler.h"

using namespace rlhf;

namespace {
// id -> probability of the distribution a sampler draws from.
std::map<int32_t, float> dist(const Sampler& s, std::vector<float> logits, std::vector<int32_t> ctx = {}) {
  auto c = s.distribution(logits, ctx);
  auto p = c.probabilities();
  std::map<int32_t, float> out;
  for (size_t i = 0; i < p.size(); ++i) out[c.ids[i]] = p[i];
  return out;
}
// logits = log(p) for a hand-picked distribution
std::vector<float> logits_of(std::vector<double> p) {
  std::vector<float> l;
  for (double x : p) l.push_back(static_cast<float>(std::log(x)));
  return l;
}
}  // namespace

TEST(Sampler, TemperatureSharpensByPower) {
  // p = (0.5, 0.3, 0.2) at T = 0.5 -> p^2 normalised = (0.25, 0.09, 0.04) / 0.38
  auto d = dist(Sampler({.temperature = 0.5f}), logits_of({0.5, 0.3, 0.2}));
  EXPECT_NEAR(d[0], 0.25 / 0.38, 1e-6);
  EXPECT_NEAR(d[1], 0.09 / 0.38, 1e-6);
  EXPECT_NEAR(d[2], 0.04 / 0.38, 1e-6);
}

TEST(Sampler, TopKKeepsKMostLikely) {
  auto d = dist(Sampler({.top_k = 2}), logits_of({0.1, 0.4, 0.2, 0.3}));
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[1], 0.4 / 0.7, 1e-6);
  EXPECT_NEAR(d[3], 0.3 / 0.7, 1e-6);
}

TEST(Sampler, TopPKeepsSmallestPrefixReachingMass) {
  // sorted: 0.4, 0.3, 0.2, 0.1; p = 0.65 -> 0.4 + 0.3 = 0.7 >= 0.65: keep two
  auto d = dist(Sampler({.top_p = 0.65f}), logits_of({0.1, 0.4, 0.2, 0.3}));
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[1], 0.4 / 0.7, 1e-6);
  // p = 0.75 -> needs the third token as well
  EXPECT_EQ(dist(Sampler({.top_p = 0.75f}), logits_of({0.1, 0.4, 0.2, 0.3})).size(), 3u);
}

TEST(Sampler, MinPDropsTokensBelowFractionOfMax) {
  // p_max = 0.5; min_p = 0.3 -> threshold 0.15: keeps 0.5, 0.3, 0.15 (boundary kept), drops 0.05
  auto d = dist(Sampler({.min_p = 0.3f}), logits_of({0.5, 0.05, 0.3, 0.15}));
  ASSERT_EQ(d.size(), 3u);
  EXPECT_FALSE(d.count(1));
  EXPECT_NEAR(d[0], 0.5 / 0.95, 1e-5);
}

TEST(Sampler, RepetitionPenaltyFollowsHfRule) {
  // logits (2, -1, 1); context has ids 0 and 1; penalty 2 -> (1, -2, 1)
  Sampler s({.temperature = 1.0f, .repetition_penalty = 2.0f});
  auto c = s.distribution(std::vector<float>{2, -1, 1}, std::vector<int32_t>{0, 1});
  std::map<int32_t, float> l;
  for (size_t i = 0; i < c.ids.size(); ++i) l[c.ids[i]] = c.logits[i];
  EXPECT_FLOAT_EQ(l[0], 1.0f);
  EXPECT_FLOAT_EQ(l[1], -2.0f);
  EXPECT_FLOAT_EQ(l[2], 1.0f);
}

TEST(Sampler, ChainAppliesTemperatureBeforeTopP) {
  // T = 0.5 turns (0.5, 0.3, 0.2) into (0.658, 0.237, 0.105); top_p 0.8 then keeps two.
  auto d = dist(Sampler({.temperature = 0.5f, .top_p = 0.8f}), logits_of({0.5, 0.3, 0.2}));
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[0], 0.25 / 0.34, 1e-5);
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s({.temperature = 0.0f});
  auto rng = sequence_rng(1, 0);
  EXPECT_EQ(s.sample(std::vector<float>{0.1f, 3.0f, 3.0f, -1.0f}, {}, rng), 1);
}

TEST(Sampler, DrawsMatchTheDistribution) {
  Sampler s({.temperature = 1.0f});
  auto logits = logits_of({0.6, 0.3, 0.1});
  auto rng = sequence_rng(123, 0);
  std::vector<int> counts(3);
  const int N = 60000;
  for (int i = 0; i < N; ++i) counts[s.sample(logits, {}, rng)]++;
  EXPECT_NEAR(counts[0] / double(N), 0.6, 0.01);
  EXPECT_NEAR(counts[1] / double(N), 0.3, 0.01);
  EXPECT_NEAR(counts[2] / double(N), 0.1, 0.01);
}

TEST(Sampler, SequenceRngDependsOnSeedAndIndexOnly) {
  auto a = sequence_rng(5, 3), b = sequence_rng(5, 3), c = sequence_rng(5, 4), d = sequence_rng(6, 3);
  auto x = a();
  EXPECT_EQ(x, b());
  EXPECT_NE(x, c());
  EXPECT_NE(x, d());
}

TEST(Sampler, TokenLogprobIsTemperatureScaledLogSoftmax) {
  std::vector<float> l{1.0f, 2.0f, 3.0f};
  double z = std::exp(0.5) + std::exp(1.0) + std::exp(1.5);  // T = 2
  EXPECT_NEAR(token_logprob(l, 0, 2.0f), 0.5 - std::log(z), 1e-6);
  double z1 = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(token_logprob(l, 2, 0.0f), 3.0 - std::log(z1), 1e-6);  // greedy: T counts as 1
}

TEST(Sampler, RejectsInvalidParameters) {
  EXPECT_ANY_THROW(Sampler({.temperature = -1.0f}));
  EXPECT_ANY_THROW(Sampler({.top_p = 0.0f}));
  EXPECT_ANY_THROW(Sampler({.min_p = 1.5f}));
}

TEST(Sampler, TemperatureDrawsMatchTheSharpenedDistribution) {
  // The plain-temperature fast path: p = (0.5, 0.3, 0.2) at T = 0.5 -> (0.25, 0.09, 0.04) / 0.38.
  Sampler s({.temperature = 0.5f});
  auto logits = logits_of({0.5, 0.3, 0.2});
  auto rng = sequence_rng(7, 1);
  std::vector<int> counts(3);
  const int N = 60000;
  for (int i = 0; i < N; ++i) counts[s.sample(logits, {}, rng)]++;
  EXPECT_NEAR(counts[0] / double(N), 0.25 / 0.38, 0.01);
  EXPECT_NEAR(counts[2] / double(N), 0.04 / 0.38, 0.01);
}
