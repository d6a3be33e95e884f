// The sampler chain: a list of small stages that each reshape a candidate distribution
// (repetition penalty, temperature, top-k, top-p, min-p), then a pick (argmax or a draw
// from the sequence's own seeded generator). Stages work on plain float arrays on the CPU.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <vector>

namespace rlhf {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax)
  int top_k = 0;                    // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off: drop tokens with p < min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off; >1 discourages tokens already in the context
};

// Candidate tokens with their logits; `sorted` says logits are in descending order.
struct Candidates {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  bool sorted = false;
  static Candidates from_logits(std::span<const float> logits);  // every vocabulary entry
  void sort_descending();
  void keep_first(size_t n);            // requires sorted
  std::vector<float> probabilities() const;  // softmax over the candidates
};

struct SamplerStage {
  virtual ~SamplerStage() = default;
  // `context`: the prompt and the tokens generated so far (for penalties).
  virtual void apply(Candidates& c, std::span<const int32_t> context) const = 0;
};

// HF's rule: a logit > 0 is divided by the penalty, a logit < 0 multiplied by it.
struct RepetitionPenalty : SamplerStage {
  float penalty;
  explicit RepetitionPenalty(float p) : penalty(p) {}
  void apply(Candidates& c, std::span<const int32_t> context) const override;
};
struct Temperature : SamplerStage {
  float t;
  explicit Temperature(float t_) : t(t_) {}
  void apply(Candidates& c, std::span<const int32_t>) const override;
};
struct TopK : SamplerStage {
  int k;
  explicit TopK(int k_) : k(k_) {}
  void apply(Candidates& c, std::span<const int32_t>) const override;
};
// Keeps the smallest prefix of the sorted distribution whose mass reaches p (at least one).
struct TopP : SamplerStage {
  float p;
  explicit TopP(float p_) : p(p_) {}
  void apply(Candidates& c, std::span<const int32_t>) const override;
};
struct MinP : SamplerStage {
  float p;
  explicit MinP(float p_) : p(p_) {}
  void apply(Candidates& c, std::span<const int32_t>) const override;
};

// A drawn token and token_logprob(logits, id, temperature) of it.
struct Draw {
  int32_t id;
  float logprob;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks a token from a row of logits (V). `rng` is the sequence's own generator.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> context, std::mt19937_64& rng) const;
  // The same pick and its log-probability at the sampling temperature (the generator's
  // rollout path): for plain temperature sampling one pass of exponentials serves both.
  Draw sample_with_logprob(std::span<const float> logits, std::span<const int32_t> context,
                           std::mt19937_64& rng) const;
  // The distribution the pick draws from, as (ids, probabilities): for tests and debugging.
  Candidates distribution(std::span<const float> logits, std::span<const int32_t> context) const;
  bool greedy() const { return params_.temperature <= 0.0f; }
  const SamplingParams& params() const { return params_; }

 private:
  bool plain() const;  // temperature sampling alone: no penalty, no truncation
  SamplingParams params_;
  std::vector<std::unique_ptr<SamplerStage>> chain_;
};

// log softmax(logits / temperature)[token]: the policy's log-probability of a token, the
// quantity PPO recomputes in the trainer (temperature 0 counts as 1). Penalties and
// truncation (top-k/p, min-p) shape only the draw, not this number.
float token_logprob(std::span<const float> logits, int32_t token, float temperature);

namespace detail {
// out[i] = e^(l[i] * scale - shift), for shift >= every l[i] * scale: AVX-512 where the CPU has
// it, else (or when `portable`) scalar code that gives the same bits. Exposed for its test.
void exp_shifted(const float* l, int64_t n, float scale, float shift, float* out, bool portable = false);
}  // namespace detail

// A sequence's generator from the run's seed and the sequence index (splitmix64 mixing), so
// a sequence samples the same tokens whatever batch it is in.
std::mt19937_64 sequence_rng(uint64_t seed, uint64_t index);

}  // namespace rlhf
