// Labelers: something that ranks K completions of a prompt. The simulated labeler stands in
// for people in automated runs: a sentiment lexicon gives each completion a "gold" score
// and rankings are drawn from those scores with Bradley-Terry noise, like an inconsistent
// human. The labeling web page (a later issue) is another Labeler behind this interface.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/datasets.h"

namespace rlhf {

struct LabelRequest {
  std::string prompt;
  std::vector<std::string> completions;  // K >= 2
};

class Labeler {
 public:
  virtual ~Labeler() = default;
  // One Ranking per request (tiers best first; `labeler` set to name()).
  virtual std::vector<Ranking> rank(const std::vector<LabelRequest>& requests) = 0;
  virtual std::string name() const = 0;
};

// Positive and negative English words common in children's stories, with weights; written
// for this project. score(text) is the gold score the simulated labeler and the pipeline's
// evaluation use (see the .cpp for the exact formula).
class SentimentLexicon {
 public:
  static SentimentLexicon builtin();
  double score(const std::string& text) const;
  const std::map<std::string, double>& words() const { return words_; }

 private:
  std::map<std::string, double> words_;  // lower-case word -> weight (> 0 positive, < 0 negative)
};

// Ranks by the lexicon's gold score with Bradley-Terry noise: the ranking is drawn
// best-first (Plackett-Luce), each remaining completion chosen with probability
// proportional to exp(score / temperature). temperature 0: exact sort, equal scores tied.
class SimulatedLabeler : public Labeler {
 public:
  SimulatedLabeler(SentimentLexicon lexicon, double temperature, uint64_t seed);
  std::vector<Ranking> rank(const std::vector<LabelRequest>& requests) override;
  std::string name() const override { return "simulated"; }

 private:
  SentimentLexicon lexicon_;
  double temperature_;
  std::mt19937_64 rng_;
};

// Distinct-n: unique n-grams of words over all n-grams, across `texts` (diversity metric).
double distinct_n(const std::vector<std::string>& texts, int n);

}  // namespace rlhf
