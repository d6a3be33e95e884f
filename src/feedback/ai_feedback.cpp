// AI feedback: multiple-choice questions to a feedback model, answered by the probabilities
// of the option letters (or by sampled votes where a backend gives no log-probabilities),
// both option orders averaged, and the AI labeler that turns them into soft rankings.
#include "feedback/ai_feedback.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/app_io.h"
#include "core/error.h"

namespace rlhf {

namespace {

// softmax of log-probabilities; all -inf (no option among an endpoint's top tokens): nullopt.
std::optional<std::vector<double>> normalise(const std::vector<double>& logprobs) {
  const double m = *std::max_element(logprobs.begin(), logprobs.end());
  if (!std::isfinite(m)) return std::nullopt;
  std::vector<double> p;
  double sum = 0;
  for (double lp : logprobs) sum += p.emplace_back(std::exp(lp - m));
  for (double& x : p) x /= sum;
  return p;
}

// The option a reply picks: the letter it starts with, after spaces and an opening "(".
int vote_of(const std::string& reply, const std::vector<std::string>& letters) {
  std::string s = trim(reply);
  if (!s.empty() && s[0] == '(') s = trim(s.substr(1));
  for (size_t i = 0; i < letters.size(); ++i)
    if (!letters[i].empty() && s.rfind(letters[i], 0) == 0 &&
        (s.size() == letters[i].size() || !std::isalnum(static_cast<unsigned char>(s[letters[i].size()]))))
      return static_cast<int>(i);
  return -1;
}

// The option a chain of thought settles on: the last "(X)" it mentions; -1 when none.
int answer_in_reasoning(const std::string& text, const std::vector<std::string>& letters) {
  int best = -1;
  size_t best_pos = 0;
  for (size_t i = 0; i < letters.size(); ++i) {
    const size_t pos = text.rfind("(" + letters[i] + ")");
    if (pos != std::string::npos && (best < 0 || pos > best_pos)) best = static_cast<int>(i), best_pos = pos;
  }
  return best;
}

std::vector<double> uniform(size_t k) { return std::vector<double>(k, 1.0 / static_cast<double>(k)); }

}  // namespace

FeedbackModel::FeedbackModel(std::shared_ptr<Llm> llm, FeedbackOptions options) : llm_(std::move(llm)), opt_(options) {
  check(llm_ != nullptr, "FeedbackModel: no model");
  check(opt_.method == "auto" || opt_.method == "logprobs" || opt_.method == "votes",
        "feedback method must be auto, logprobs or votes, got '" + opt_.method + "'");
  check(opt_.votes >= 1, "feedback votes must be >= 1, got " + std::to_string(opt_.votes));
  check(opt_.cot_clamp_low >= 0 && opt_.cot_clamp_low <= opt_.cot_clamp_high && opt_.cot_clamp_high <= 1,
        "feedback CoT clamp must satisfy 0 <= low <= high <= 1");
}

std::string FeedbackModel::describe() const { return llm_->describe(); }

std::vector<Choice> FeedbackModel::choose(const std::vector<std::string>& questions, const std::vector<std::string>& letters,
                                          const std::string& cot_cue, const std::string& answer_cue) {
  check(letters.size() >= 2, "a multiple-choice question needs at least 2 options");
  std::vector<Choice> out(questions.size());
  if (questions.empty()) return out;
  const uint64_t call_seed = opt_.seed + 1000003 * calls_++;

  // The letter after each prompt: probabilities from log-probabilities, or votes.
  auto answer = [&](const std::vector<std::string>& prompts, std::vector<Choice>& choices) {
    std::optional<std::vector<std::vector<double>>> lp;
    if (opt_.method != "votes") {
      lp = llm_->continuation_logprobs(prompts, letters);
      check(lp.has_value() || opt_.method == "auto",
            llm_->describe() + " gives no log-probabilities (feedback method 'logprobs'); use 'auto' or 'votes'");
      if (!lp && last_method_ != "votes")
        std::cerr << "feedback: " << llm_->describe() << " gives no log-probabilities; falling back to " << opt_.votes
                  << " sampled votes per question\n";
    }
    last_method_ = lp ? "logprobs" : "votes";
    if (lp) {
      for (size_t i = 0; i < prompts.size(); ++i) {
        auto p = normalise((*lp)[i]);
        choices[i].probs = p ? *p : uniform(letters.size());
        choices[i].method = p ? "logprobs" : "unanswered";
      }
      return;
    }
    CompletionParams cp;
    cp.max_tokens = 4;
    cp.temperature = 1.0f;
    cp.n = opt_.votes;
    cp.seed = call_seed;
    const auto replies = llm_->complete(prompts, cp);
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::vector<double> counts(letters.size(), 0.0);
      double total = 0;
      for (const auto& c : replies[i])
        if (int v = vote_of(c.text, letters); v >= 0) counts[v] += 1, total += 1;
      if (total > 0)
        for (double& x : counts) x /= total;
      choices[i].probs = total > 0 ? counts : uniform(letters.size());
      choices[i].method = total > 0 ? "votes" : "unanswered";
    }
  };

  if (!opt_.chain_of_thought) {
    answer(questions, out);
    return out;
  }
  // Chain of thought: reason, then the answer the reasoning names, or else the letter's
  // probabilities after it; either way clamped to the band, since CoT answers are
  // overconfident (Bai et al. 2022, section 4.1).
  check(!cot_cue.empty() && !answer_cue.empty(), "chain-of-thought feedback needs a reasoning cue and an answer cue");
  std::vector<std::string> cot_prompts;
  for (const auto& q : questions) cot_prompts.push_back(q + cot_cue);
  CompletionParams cp;
  cp.max_tokens = opt_.cot_max_tokens;
  cp.temperature = 0.0f;
  cp.seed = call_seed;
  cp.stop = {"\n\nHuman:", "\n\nConsider the following"};
  const auto reasoning = llm_->complete(cot_prompts, cp);
  std::vector<std::string> unparsed;
  std::vector<size_t> unparsed_at;
  for (size_t i = 0; i < questions.size(); ++i) {
    out[i].reasoning = reasoning[i][0].text;
    if (int a = answer_in_reasoning(out[i].reasoning, letters); a >= 0) {
      out[i].probs.assign(letters.size(), 0.0);
      out[i].probs[a] = 1.0;
      out[i].method = "cot";
    } else {
      unparsed.push_back(cot_prompts[i] + out[i].reasoning + "\n" + answer_cue);
      unparsed_at.push_back(i);
    }
  }
  if (!unparsed.empty()) {
    std::vector<Choice> scored(unparsed.size());
    answer(unparsed, scored);
    for (size_t k = 0; k < unparsed.size(); ++k) {
      out[unparsed_at[k]].probs = scored[k].probs;
      out[unparsed_at[k]].method = scored[k].method == "unanswered" ? "unanswered" : "cot";
    }
  }
  for (auto& c : out) {
    if (c.method != "cot") continue;
    double sum = 0;
    for (double& p : c.probs) sum += (p = std::clamp(p, opt_.cot_clamp_low, opt_.cot_clamp_high));
    for (double& p : c.probs) p /= sum;
  }
  return out;
}

std::vector<PairJudgement> judge_pairs(FeedbackModel& fm, const Constitution& c, const std::vector<PairToJudge>& pairs,
                                       std::mt19937_64& rng) {
  check(!c.comparisons.empty(), "constitution '" + c.name + "' has no comparison principles; AI labels need one");
  std::vector<PairJudgement> out(pairs.size());
  std::vector<std::string> questions;
  questions.reserve(2 * pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    out[i].principle = static_cast<int>(rng() % c.comparisons.size());
    // A prompt that is already a dialogue up to the assistant's turn (HH-RLHF's
    // "\n\nHuman: ...\n\nAssistant:") is shown as it is, not wrapped in a second one.
    const std::string t = trim(pairs[i].prompt);
    const bool dialogue = t.rfind("Human:", 0) == 0 && t.size() >= 10 && t.compare(t.size() - 10, 10, "Assistant:") == 0;
    const std::string conversation = dialogue ? t : fill_template(c.conversation, {{"prompt", pairs[i].prompt}});
    const std::string cue = fm.chain_of_thought() ? "" : c.answer_cue;
    // Both orders: first as (A), then first as (B).
    for (int order = 0; order < 2; ++order) {
      const std::string& a = order == 0 ? pairs[i].first : pairs[i].second;
      const std::string& b = order == 0 ? pairs[i].second : pairs[i].first;
      questions.push_back(fill_template(c.comparison, {{"conversation", conversation},
                                                       {"principle", c.comparisons[out[i].principle]},
                                                       {"a", trim(a)},
                                                       {"b", trim(b)}}) +
                          cue);
    }
  }
  const auto choices = fm.choose(questions, {"A", "B"}, c.cot_cue, c.answer_cue);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const Choice &as_a = choices[2 * i], &as_b = choices[2 * i + 1];
    out[i].p_first_as_a = as_a.probs[0];
    out[i].p_first_as_b = as_b.probs[1];
    out[i].p_first = 0.5 * (out[i].p_first_as_a + out[i].p_first_as_b);
    out[i].method = as_a.method == as_b.method ? as_a.method : as_a.method + "+" + as_b.method;
  }
  return out;
}

AiLabeler::AiLabeler(std::shared_ptr<FeedbackModel> fm, Constitution constitution, uint64_t seed)
    : fm_(std::move(fm)), constitution_(std::move(constitution)), rng_(seed) {
  check(fm_ != nullptr, "AiLabeler: no feedback model");
  check(!constitution_.comparisons.empty(),
        "constitution '" + constitution_.name + "' has no comparison principles; AI labels need one");
}

std::vector<Ranking> AiLabeler::rank(const std::vector<LabelRequest>& requests) {
  // Every pair of every request in one batch of questions.
  std::vector<PairToJudge> pairs;
  std::vector<std::array<size_t, 3>> where;  // request, i, j
  for (size_t r = 0; r < requests.size(); ++r) {
    const size_t K = requests[r].completions.size();
    check(K >= 2, "AiLabeler: request " + std::to_string(r) + " has " + std::to_string(K) +
                      " completions; ranking needs at least 2");
    for (size_t i = 0; i < K; ++i)
      for (size_t j = i + 1; j < K; ++j) {
        pairs.push_back({requests[r].prompt, requests[r].completions[i], requests[r].completions[j]});
        where.push_back({r, i, j});
      }
  }
  const auto judged = judge_pairs(*fm_, constitution_, pairs, rng_);

  std::vector<Ranking> out(requests.size());
  std::vector<std::vector<std::vector<double>>> P(requests.size());
  std::vector<nlohmann::json> detail(requests.size(), nlohmann::json::array());
  for (size_t r = 0; r < requests.size(); ++r) {
    const size_t K = requests[r].completions.size();
    P[r].assign(K, std::vector<double>(K, 0.5));
  }
  for (size_t k = 0; k < judged.size(); ++k) {
    const auto [r, i, j] = where[k];
    P[r][i][j] = judged[k].p_first;
    P[r][j][i] = 1.0 - judged[k].p_first;
    detail[r].push_back({{"i", i}, {"j", j}, {"p_i", judged[k].p_first}, {"p_i_as_a", judged[k].p_first_as_a},
                         {"p_i_as_b", judged[k].p_first_as_b},
                         {"principle", constitution_.comparisons[judged[k].principle]},
                         {"method", judged[k].method}});
  }
  for (size_t r = 0; r < requests.size(); ++r) {
    const size_t K = requests[r].completions.size();
    Ranking& rk = out[r];
    rk.prompt = requests[r].prompt;
    rk.completions = requests[r].completions;
    rk.labeler = name();
    // Order by expected wins (a Borda count of the soft labels); equal counts share a tier.
    std::vector<double> wins(K, 0.0);
    for (size_t i = 0; i < K; ++i)
      for (size_t j = 0; j < K; ++j)
        if (i != j) wins[i] += P[r][i][j];
    std::vector<int> order(K);
    for (size_t i = 0; i < K; ++i) order[i] = static_cast<int>(i);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return wins[a] > wins[b]; });
    for (int i : order) {
      if (rk.tiers.empty() || std::abs(wins[rk.tiers.back().front()] - wins[i]) > 1e-12) rk.tiers.push_back({});
      rk.tiers.back().push_back(i);
    }
    for (auto& tier : rk.tiers) std::sort(tier.begin(), tier.end());
    rk.extra = {{"preference_probs", P[r]},
                {"ai_feedback", {{"feedback_model", fm_->describe()},
                                 {"constitution", constitution_.name},
                                 {"pairs", detail[r]}}}};
  }
  return out;
}

std::pair<double, double> wilson_interval(double k, double n, double z) {
  if (n <= 0) return {0.0, 1.0};
  const double p = k / n, z2 = z * z;
  const double centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const double half = z / (1 + z2 / n) * std::sqrt(p * (1 - p) / n + z2 / (4 * n * n));
  return {std::max(0.0, centre - half), std::min(1.0, centre + half)};
}

}  // namespace rlhf
