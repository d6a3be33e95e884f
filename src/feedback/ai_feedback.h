// AI feedback (RLAIF, Bai et al. 2022 section 4): a feedback model answers a multiple-choice
// question, and the normalised probabilities of the option letters are its soft preference.
// Everything that asks a model to judge (the AI labeler, the agreement measurement, the
// red-team judge) goes through FeedbackModel, so a model loaded in-process and an
// OpenAI-compatible endpoint behave alike.
#pragma once
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "apps/llm.h"
#include "feedback/constitution.h"
#include "feedback/labeler.h"

namespace rlhf {

struct FeedbackOptions {
  // "auto": option log-probabilities where the backend gives them, sampled votes otherwise;
  // "logprobs": log-probabilities or an error; "votes": always sampled votes.
  std::string method = "auto";
  int votes = 8;                 // samples per question when voting (temperature 1)
  bool chain_of_thought = false; // reason first (cot_cue), then answer; probabilities clamped
  int64_t cot_max_tokens = 128;  // length of the reasoning
  double cot_clamp_low = 0.4, cot_clamp_high = 0.6;  // the paper's 40-60% band
  uint64_t seed = 0;
};

// One answered question.
struct Choice {
  std::vector<double> probs;     // over the options, sums to 1
  std::string method;            // "logprobs", "votes" or "cot" (reasoning, then parsed / scored, clamped)
  std::string reasoning;         // the chain of thought, when asked for
};

class FeedbackModel {
 public:
  FeedbackModel(std::shared_ptr<Llm> llm, FeedbackOptions options = {});
  // `questions` end with the answer cue (the text right before the option letter, e.g.
  // "The answer is: ("); `letters` are the options' letters ("A", "B", ...). With
  // chain_of_thought() the questions come without the cue: `cot_cue` asks for the
  // reasoning, and `answer_cue` after it for the letter when the reasoning names none.
  std::vector<Choice> choose(const std::vector<std::string>& questions, const std::vector<std::string>& letters,
                             const std::string& cot_cue = "", const std::string& answer_cue = "");
  std::string describe() const;
  // How the last call answered ("logprobs" or "votes"): said in outputs, since a fallback to
  // votes is coarser.
  const std::string& last_method() const { return last_method_; }
  bool chain_of_thought() const { return opt_.chain_of_thought; }
  Llm& llm() { return *llm_; }

 private:
  std::shared_ptr<Llm> llm_;
  FeedbackOptions opt_;
  std::string last_method_;
  uint64_t calls_ = 0;
};

// P(a over b) for each pair, under a comparison principle drawn per pair, asked in both
// orders ((A)=a then (A)=b) and averaged so a preference for a position cancels.
struct PairJudgement {
  double p_first = 0.5;          // P(first completion preferred), averaged over both orders
  double p_first_as_a = 0.5;     // with the first shown as (A)
  double p_first_as_b = 0.5;     // with the first shown as (B)
  int principle = 0;             // index into Constitution::comparisons
  std::string method;
};

// prompt: the human's turn (put into the constitution's conversation template), or a whole
// dialogue up to the assistant's turn ("Human: ...\n\nAssistant:", as in HH-RLHF), shown as is.
struct PairToJudge {
  std::string prompt, first, second;
};

std::vector<PairJudgement> judge_pairs(FeedbackModel& fm, const Constitution& c, const std::vector<PairToJudge>& pairs,
                                       std::mt19937_64& rng);

// The AI labeler: every pair of a request's K completions judged (K choose 2, both orders);
// the ranking orders completions by their summed win probabilities (ties share a tier), and
// Ranking::extra holds the soft labels as "preference_probs" (K x K, P[i][j] = P(i over j)),
// which rankings_to_pairs turns into each pair's target probability.
class AiLabeler : public Labeler {
 public:
  AiLabeler(std::shared_ptr<FeedbackModel> fm, Constitution constitution, uint64_t seed);
  std::vector<Ranking> rank(const std::vector<LabelRequest>& requests) override;
  std::string name() const override { return "ai"; }

 private:
  std::shared_ptr<FeedbackModel> fm_;
  Constitution constitution_;
  std::mt19937_64 rng_;
};

// 95% Wilson score interval of a proportion k/n (the usual one for rates; sane at 0 and n).
std::pair<double, double> wilson_interval(double k, double n, double z = 1.959963984540054);

}  // namespace rlhf
