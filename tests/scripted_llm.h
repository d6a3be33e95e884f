// A language model that answers by script, for testing the layers above the Llm interface
// (apps, AI feedback, red teaming) without a model: fixed replies by prompt substring and
// fixed option log-probabilities.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apps/llm.h"

namespace rlhf::test {

class ScriptedLlm : public Llm {
 public:
  // For the first key found in a prompt, the next of that key's replies ("(script ran out)"
  // after the last; "(no script)" when no key matches).
  std::vector<std::pair<std::string, std::vector<std::string>>> script;
  // log-probabilities of the candidates after a prompt; unset or returning nullopt: "this
  // backend gives none" (as an endpoint without logprobs).
  std::function<std::optional<std::vector<double>>(const std::string& prompt, const std::vector<std::string>& candidates)>
      logprobs;
  std::vector<std::vector<std::string>> calls;  // the prompts of each complete() call
  std::vector<std::string> scored;              // every prompt continuation_logprobs was asked about
  CompletionParams last_params;

  std::vector<std::vector<Completion>> complete(const std::vector<std::string>& prompts,
                                                const CompletionParams& params) override {
    calls.push_back(prompts);
    last_params = params;
    std::vector<std::vector<Completion>> out;
    for (const auto& p : prompts) {
      std::vector<Completion> choices;
      for (int j = 0; j < params.n; ++j) {
        std::string text = "(no script)";
        for (auto& [key, replies] : script)
          if (p.find(key) != std::string::npos) {
            text = used_[key] < replies.size() ? replies[used_[key]++] : "(script ran out)";
            break;
          }
        choices.push_back({text, "stop", 1});
      }
      out.push_back(std::move(choices));
    }
    return out;
  }

  std::optional<std::vector<std::vector<double>>> continuation_logprobs(
      const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) override {
    if (!logprobs) return std::nullopt;
    std::vector<std::vector<double>> out;
    for (const auto& p : prompts) {
      scored.push_back(p);
      auto lp = logprobs(p, candidates);
      if (!lp) return std::nullopt;
      out.push_back(*lp);
    }
    return out;
  }

  std::string describe() const override { return "scripted"; }

 private:
  std::map<std::string, size_t> used_;
};

}  // namespace rlhf::test
