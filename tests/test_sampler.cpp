// Sampler chain stages against hand-computed distributions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
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

TEST(Sampler, VectorAndScalarExponentialsGiveTheSameBitsAndMatchExp) {
  // The draw's exponentials: AVX-512 where the CPU has it, scalar code elsewhere. Both must give
  // the same bits (a seed draws the same tokens on every CPU) and e^x within 3e-7 relative.
  std::vector<float> l;
  for (int i = 0; i < 20000; ++i) l.push_back(-90.0f + 90.0f * i / 19999.0f + (i % 7) * 1e-4f);
  const float scale = 1.3f, shift = *std::max_element(l.begin(), l.end()) * scale;
  const size_t finite = l.size();
  // Non-finite logits (a broken model's) come out alike too: both give e^-87. In the middle of
  // a block of 16, so the vector code meets them.
  l.insert(l.begin() + 5, {NAN, -INFINITY});
  std::vector<float> vec(l.size()), scalar(l.size());
  rlhf::detail::exp_shifted(l.data(), l.size(), scale, shift, vec.data());
  rlhf::detail::exp_shifted(l.data(), l.size(), scale, shift, scalar.data(), /*portable=*/true);
  for (size_t i = 0; i < l.size(); ++i) ASSERT_EQ(vec[i], scalar[i]) << "at " << i << ": " << l[i];
  EXPECT_EQ(scalar[5], scalar[6]);
  EXPECT_FLOAT_EQ(scalar[5], std::exp(-87.0f));
  l.erase(l.begin() + 5, l.begin() + 7);
  scalar.erase(scalar.begin() + 5, scalar.begin() + 7);
  ASSERT_EQ(l.size(), finite);
  for (size_t i = 0; i < l.size(); ++i) {
    const double x = std::max(static_cast<double>(l[i] * scale - shift), -87.0);
    ASSERT_NEAR(scalar[i], std::exp(x), 3e-7 * std::exp(x)) << "at " << x;
  }
}

TEST(Sampler, SampleWithLogprobDrawsWhatSampleDrawsAndItsLogSoftmax) {
  // A 50,000-token row (the rollout path): the same token as sample() for the same generator
  // state, and the log-probability token_logprob computes, at T = 1 and at T = 0.7.
  std::mt19937_64 g(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(50000);
  for (auto& x : logits) x = normal(g);
  for (float t : {1.0f, 0.7f}) {
    Sampler s({.temperature = t});
    auto a = sequence_rng(11, 2), b = sequence_rng(11, 2);
    for (int i = 0; i < 50; ++i) {
      const Draw d = s.sample_with_logprob(logits, {}, a);
      ASSERT_EQ(d.id, s.sample(logits, {}, b));
      ASSERT_NEAR(d.logprob, token_logprob(logits, d.id, t), 2e-5);
    }
  }
  // With a truncating stage the general path serves: still the same token and log-probability.
  Sampler k({.temperature = 1.0f, .top_k = 5});
  auto a = sequence_rng(4, 0), b = sequence_rng(4, 0);
  const Draw d = k.sample_with_logprob(logits, {}, a);
  EXPECT_EQ(d.id, k.sample(logits, {}, b));
  EXPECT_FLOAT_EQ(d.logprob, token_logprob(logits, d.id, 1.0f));
}

TEST(Sampler, PlainDrawsOverALargeVocabularyMatchTheDistribution) {
  // Four likely tokens among 40,000 near-impossible ones: the chunked inverse-CDF walk must
  // land on each with its probability, whichever chunk it is in.
  std::vector<float> logits(40000, -30.0f);
  const int32_t ids[4] = {5, 63, 64, 39999};  // inside, at the end and start of a chunk, last
  const double p[4] = {0.4, 0.3, 0.2, 0.1};
  for (int i = 0; i < 4; ++i) logits[ids[i]] = static_cast<float>(std::log(p[i]));
  Sampler s({.temperature = 1.0f});
  auto rng = sequence_rng(9, 0);
  std::map<int32_t, int> counts;
  const int N = 20000;
  for (int i = 0; i < N; ++i) counts[s.sample_with_logprob(logits, {}, rng).id]++;
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(counts[ids[i]] / double(N), p[i], 0.012) << ids[i];
  EXPECT_EQ(counts.size(), 4u);  // the rest carry 40,000 * e^-30 ~ 4e-9 of the mass
}
