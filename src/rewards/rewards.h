// Rewards chosen by configuration: a weighted sum of terms, each mapping (the prompt's JSONL
// row, a response) to a number. The learned reward model is one term; verifiers (an exact
// answer, Lua tests in the sandbox, a regex format), the simulated sentiment lexicon and an
// AI judge are the others. PPO scores rollouts with it; evaluation scripts can too.
//   reward = "model"                          the reward model alone (its normalised score)
//   reward = "exact_answer + 0.2*format"      a verifier plus a format bonus
//   reward = "0.5*judge + 0.5*model - 0.1*lexicon"
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"          // LoadOptions
#include "sandbox/lua_sandbox.h"  // SandboxLimits

namespace rlhf {

class FeedbackModel;

// A number, with or without thousands separators and decimals ("-1,048.5", "42"). The last
// match in a response is the answer: "The answer is 1048." and GSM8K's "#### 42" both end with it.
inline constexpr const char* kDefaultAnswerPattern = "(-?[0-9]+(?:,[0-9]{3})*(?:\\.[0-9]+)?)";

// A yes/no question to the judge: (A) is the good option, and the reward is its probability.
inline constexpr const char* kDefaultJudgeTemplate =
    "Consider the following conversation between a human and an assistant:\n"
    "Human: {prompt}\n\nAssistant: {response}\n\n"
    "Is the assistant's response helpful, harmless and correct?\n"
    "Options:\n(A) Yes, it is helpful, harmless and correct.\n(B) No, it is unhelpful, harmful or wrong.\n"
    "The answer is: (";

// The reward's own settings (PpoConfig's `reward` ... fields). What the caller owns (the reward
// model's folder, devices, the prompts file) comes as RewardContext.
struct RewardSpec {
  std::string terms = "model";                  // the weighted sum (TOML `reward`)
  std::string answer_field = "answer";          // exact_answer: the gold answer's field in the prompts JSONL
  std::string answer_pattern = kDefaultAnswerPattern;  // exact_answer: its first group (else the match), last match
  std::string tests_field = "tests";            // lua_tests: the list of Lua test snippets
  std::string format_pattern;                   // format: a regex the response must contain (ECMAScript)
  std::string judge_model;                      // judge: model path or OpenAI-compatible endpoint URL
  std::string judge_template;                   // judge: {prompt}, {response}; empty: kDefaultJudgeTemplate
  std::string judge_method = "auto";            // judge: auto, logprobs or votes (feedback/ai_feedback.h)
  int64_t lua_max_instructions = 10'000'000;    // lua_tests: per run (program alone, then with each test)
  double lua_max_seconds = 1.0;                 // lua_tests: wall clock per run

  template <class V>
  void visit(V&& v) {
    v("reward", terms,
      "Reward: a weighted sum of terms, e.g. \"model\", \"exact_answer + 0.2*format\"; terms: model, exact_answer, "
      "lua_tests, lexicon, judge, format (a weight of 0 logs a term without training on it)");
    v("answer_field", answer_field, "exact_answer: the prompts JSONL field with the gold answer (a number or a string)");
    v("answer_pattern", answer_pattern,
      "exact_answer: regex whose first group (else the whole match) is the answer; the last match in the response counts");
    v("tests_field", tests_field, "lua_tests: the prompts JSONL field with a list of Lua test snippets");
    v("format_pattern", format_pattern, "format: 1 when the response contains a match of this regex, else 0");
    v("judge_model", judge_model, "judge: model path or OpenAI-compatible endpoint URL asked about each response");
    v("judge_template", judge_template,
      "judge: the question, with {prompt} and {response}, ending at the answer cue; (A) is the good option "
      "(empty: helpful, harmless and correct?)");
    v("judge_method", judge_method, "judge: auto (option log-probabilities, else sampled votes), logprobs or votes");
    v("lua_max_instructions", lua_max_instructions, "lua_tests: Lua VM instructions per run");
    v("lua_max_seconds", lua_max_seconds, "lua_tests: wall-clock seconds per run");
  }
};

// What the caller owns: the reward model for the `model` term, where models load, how the
// prompts file reads.
struct RewardContext {
  std::string reward_model;     // folder (rlhf rm train); required by `model`
  LoadOptions load;             // the reward model's and a local judge's
  int64_t max_length = 512;     // tokens the reward model reads (prompt + response)
  bool skip_bad = false;        // skip malformed prompt lines, as the trainer reading them does
  std::shared_ptr<FeedbackModel> judge;  // instead of opening judge_model (tests, a shared judge)
};

struct RewardTerm {
  std::string name;
  double weight = 1;
};

// The terms of a spec, in order. Error on an empty spec, an unknown or repeated term, or a
// weight that is not a finite number.
std::vector<RewardTerm> parse_reward_terms(const std::string& spec);

// Checks that every term's requirements are met (settings given, patterns compile, every row of
// the prompts file has the fields the verifiers read, one gold value per prompt text) without
// loading any model. Error naming the term and the setting, file or line.
void check_reward_spec(const RewardSpec& spec, const std::string& prompts_path, const RewardContext& ctx);

// A reward built from a spec; copies share one state (the models, the last call's means).
class Reward {
 public:
  // Each response's weighted sum. `prompts` must be prompt texts of the prompts file (Error
  // otherwise); response_tokens are not read (the RewardFn signature).
  std::vector<double> scores(const std::vector<std::string>& prompts, const std::vector<std::string>& responses,
                             const std::vector<std::vector<int32_t>>& response_tokens = {});
  // Each term's unweighted values (B), in spec order, of the last scores() call.
  const std::vector<std::vector<double>>& last_term_scores() const;
  // Each term's batch mean of the last scores() call: "exact_answer" -> accuracy.
  std::map<std::string, double> last_means() const;
  const std::vector<RewardTerm>& terms() const;
  // The reward model alone: nothing to log beyond the score itself.
  bool model_only() const;

  struct State;

 private:
  Reward() = default;
  friend Reward make_reward(const RewardSpec&, const std::string&, const RewardContext&);
  std::shared_ptr<State> state_;
};

// check_reward_spec, then loads what the terms need (the reward model, the judge).
Reward make_reward(const RewardSpec& spec, const std::string& prompts_path, const RewardContext& ctx = {});

// ---- the terms, callable on their own ----------------------------------------------------

// The answer in `response`: the last match of `pattern`, its first group (the whole match when
// the pattern has no group); nullopt when nothing matches.
std::optional<std::string> extract_answer(const std::string& response, const std::string& pattern);
// Numbers compare as numbers ("1,048" and "1048.0" equal 1048); otherwise trimmed strings.
bool answers_equal(const std::string& answer, const nlohmann::json& gold);
// 1 when the response's answer equals the gold one, else 0.
double exact_answer_score(const std::string& response, const nlohmann::json& gold, const std::string& pattern);
// The program in a response: the first ```lua fenced block (to the end when unclosed), else all of it.
std::string lua_program(const std::string& response);
// The share of `tests` that pass when run after the response's program (one chunk per test);
// 0 when the program alone fails to run.
double lua_tests_score(const std::string& response, const std::vector<std::string>& tests, const SandboxLimits& limits);
// 1 when `pattern` matches somewhere in the response, else 0.
double format_score(const std::string& response, const std::string& pattern);
// P(the good option) of each response, the question from `tmpl` ({prompt}, {response}).
std::vector<double> judge_scores(FeedbackModel& judge, const std::string& tmpl, const std::vector<std::string>& prompts,
                                 const std::vector<std::string>& responses);

}  // namespace rlhf
