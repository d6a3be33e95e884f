#include "generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/avx512_math.h"

namespace rlhf {

namespace {

// ---- Plain temperature sampling over a large vocabulary ---------------------------------
// e^x for x <= 0 as avx512::exp_nonpositive computes it, one value at a time, with the same
// operations in the same order (explicit fmas, round to nearest even, exact scaling by 2^n):
// the same bits on a CPU without AVX-512, so a seed draws the same tokens everywhere.
float exp_nonpositive_scalar(float x) {
  x = x > -87.0f ? x : -87.0f;  // as _mm512_max_ps(x, -87): NaN gives -87 too
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = std::fma(-n, 0.693145751953125f, x);
  r = std::fma(-n, 1.428606765330187e-06f, r);
  float p = 1.0f / 720;
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = std::fma(p, r, c);
  return std::ldexp(p, static_cast<int>(n));
}

// The whole blocks of 16 values; returns how many values it did.
RLHF_AVX512 int64_t exp_shifted_avx512(const float* l, int64_t n, float scale, float shift, float* out) {
  const __m512 s = _mm512_set1_ps(scale), m = _mm512_set1_ps(shift);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)  // (l * scale) - shift: a product, then a difference, no fma (as the scalar twin)
    _mm512_storeu_ps(out + i, avx512::exp_nonpositive(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(l + i), s), m)));
  return i;
}

// A 53-bit uniform in [0, 1) from the sequence's generator.
double uniform53(std::mt19937_64& rng) { return (rng() >> 11) * 0x1.0p-53; }

}  // namespace

namespace detail {
void exp_shifted(const float* l, int64_t n, float scale, float shift, float* out, bool portable) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  for (int64_t i = avx512 && !portable ? exp_shifted_avx512(l, n, scale, shift, out) : 0; i < n; ++i) {
    const float prod = l[i] * scale;
    out[i] = exp_nonpositive_scalar(prod - shift);
  }
}
}  // namespace detail

namespace {

constexpr int64_t kChunk = 64;  // the draw walks chunk sums, then one chunk's values

// Inverse-CDF draw from a row's logits at temperature 1 / inv_t, and the drawn token's
// log-probability. The exponentials are computed once; the walk adds the same chunk sums in
// the same order as the total, so the target u * total is always reached.
Draw draw_plain(std::span<const float> logits, float inv_t, double u) {
  const int64_t V = logits.size();
  thread_local std::vector<float> e;
  thread_local std::vector<double> chunk;
  e.resize(V);
  chunk.resize((V + kChunk - 1) / kChunk);
  const float mx = *std::max_element(logits.begin(), logits.end()) * inv_t;
  detail::exp_shifted(logits.data(), V, inv_t, mx, e.data());
  double total = 0;
  for (size_t c = 0; c < chunk.size(); ++c) {
    double s = 0;
    for (int64_t i = c * kChunk; i < std::min<int64_t>(V, (c + 1) * kChunk); ++i) s += e[i];
    chunk[c] = s;
    total += s;
  }
  const double target = u * total;
  int32_t id = static_cast<int32_t>(V - 1);
  double cdf = 0;
  for (size_t c = 0; c < chunk.size(); ++c) {
    if (target >= cdf + chunk[c]) {
      cdf += chunk[c];
      continue;
    }
    const int64_t end = std::min<int64_t>(V, (c + 1) * kChunk);
    id = static_cast<int32_t>(end - 1);  // if rounding inside the chunk falls short of its sum
    for (int64_t i = c * kChunk; i < end; ++i) {
      cdf += e[i];
      if (target < cdf) {
        id = static_cast<int32_t>(i);
        break;
      }
    }
    break;
  }
  return {id, static_cast<float>(logits[id] * inv_t - mx - std::log(total))};
}

}  // namespace

Candidates Candidates::from_logits(std::span<const float> logits) {
  Candidates c;
  c.ids.resize(logits.size());
  std::iota(c.ids.begin(), c.ids.end(), 0);
  c.logits.assign(logits.begin(), logits.end());
  return c;
}

void Candidates::sort_descending() {
  if (sorted) return;
  std::vector<size_t> order(ids.size());
  std::iota(order.begin(), order.end(), 0);
  // Stable: equal logits keep id order, so ties resolve to the lower id like argmax does.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::vector<int32_t> new_ids(ids.size());
  std::vector<float> new_logits(ids.size());
  for (size_t i = 0; i < order.size(); ++i) {
    new_ids[i] = ids[order[i]];
    new_logits[i] = logits[order[i]];
  }
  ids.swap(new_ids);
  logits.swap(new_logits);
  sorted = true;
}

void Candidates::keep_first(size_t n) {
  if (n < ids.size()) {
    ids.resize(n);
    logits.resize(n);
  }
}

std::vector<float> Candidates::probabilities() const {
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<float> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
  for (auto& x : p) x = static_cast<float>(x / sum);
  return p;
}

void RepetitionPenalty::apply(Candidates& c, std::span<const int32_t> context) const {
  std::vector<int32_t> seen(context.begin(), context.end());
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < c.ids.size(); ++i)
    if (std::binary_search(seen.begin(), seen.end(), c.ids[i]))
      c.logits[i] = c.logits[i] > 0 ? c.logits[i] / penalty : c.logits[i] * penalty;
  c.sorted = false;
}

void Temperature::apply(Candidates& c, std::span<const int32_t>) const {
  for (auto& l : c.logits) l /= t;
}

void TopK::apply(Candidates& c, std::span<const int32_t>) const {
  if (k <= 0 || static_cast<size_t>(k) >= c.ids.size()) return;
  c.sort_descending();
  c.keep_first(k);
}

void TopP::apply(Candidates& c, std::span<const int32_t>) const {
  if (p >= 1.0f) return;
  c.sort_descending();
  auto probs = c.probabilities();
  double mass = 0;
  size_t n = 0;
  while (n < probs.size()) {
    mass += probs[n++];
    if (mass >= p) break;
  }
  c.keep_first(std::max<size_t>(n, 1));
}

void MinP::apply(Candidates& c, std::span<const int32_t>) const {
  if (p <= 0.0f) return;
  c.sort_descending();
  // p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
  const float threshold = c.logits[0] + std::log(p);
  size_t n = 1;
  while (n < c.logits.size() && c.logits[n] >= threshold) ++n;
  c.keep_first(n);
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  check(params.temperature >= 0, "temperature must be >= 0, got " + std::to_string(params.temperature));
  check(params.top_p > 0 && params.top_p <= 1, "top_p must be in (0, 1], got " + std::to_string(params.top_p));
  check(params.min_p >= 0 && params.min_p < 1, "min_p must be in [0, 1), got " + std::to_string(params.min_p));
  check(params.top_k >= 0, "top_k must be >= 0, got " + std::to_string(params.top_k));
  check(params.repetition_penalty > 0, "repetition_penalty must be > 0");
  if (params.repetition_penalty != 1.0f) chain_.push_back(std::make_unique<RepetitionPenalty>(params.repetition_penalty));
  if (greedy()) return;
  if (params.temperature != 1.0f) chain_.push_back(std::make_unique<Temperature>(params.temperature));
  if (params.top_k > 0) chain_.push_back(std::make_unique<TopK>(params.top_k));
  if (params.top_p < 1.0f) chain_.push_back(std::make_unique<TopP>(params.top_p));
  if (params.min_p > 0.0f) chain_.push_back(std::make_unique<MinP>(params.min_p));
}

Candidates Sampler::distribution(std::span<const float> logits, std::span<const int32_t> context) const {
  auto c = Candidates::from_logits(logits);
  for (const auto& stage : chain_) stage->apply(c, context);
  return c;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> context,
                        std::mt19937_64& rng) const {
  if (greedy() && chain_.empty())
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Inverse-CDF draws with a 53-bit uniform: reproducible across platforms, unlike
  // std::discrete_distribution whose algorithm the standard leaves open.
  const double u = uniform53(rng);
  // Plain temperature sampling, the rollout default: draw straight from the logits, in id
  // order like the general path, without building a candidate list.
  if (plain()) return draw_plain(logits, 1.0f / params_.temperature, u).id;
  auto c = distribution(logits, context);
  if (greedy()) return c.ids[std::max_element(c.logits.begin(), c.logits.end()) - c.logits.begin()];
  auto probs = c.probabilities();
  double cdf = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    cdf += probs[i];
    if (u < cdf) return c.ids[i];
  }
  return c.ids.back();
}

bool Sampler::plain() const {
  return !greedy() && params_.repetition_penalty == 1.0f && params_.top_k == 0 && params_.top_p >= 1.0f &&
         params_.min_p <= 0.0f;
}

Draw Sampler::sample_with_logprob(std::span<const float> logits, std::span<const int32_t> context,
                                  std::mt19937_64& rng) const {
  if (plain()) return draw_plain(logits, 1.0f / params_.temperature, uniform53(rng));
  const int32_t id = sample(logits, context, rng);
  return {id, token_logprob(logits, id, params_.temperature)};
}

float token_logprob(std::span<const float> logits, int32_t token, float temperature) {
  const float t = temperature > 0 ? temperature : 1.0f;
  float mx = -INFINITY;
  for (float l : logits) mx = std::max(mx, l / t);
  double sum = 0;
  for (float l : logits) sum += std::exp(l / t - mx);
  return static_cast<float>(logits[token] / t - mx - std::log(sum));
}

std::mt19937_64 sequence_rng(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return std::mt19937_64(z ^ (z >> 31));
}

}  // namespace rlhf
