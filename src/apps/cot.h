// Chain-of-thought prompting (Wei et al. 2022; Kojima et al. 2022: "Let's think step by step")
// and self-consistency (Wang et al. 2023): sample several reasoning paths, extract each one's
// answer, and take the majority.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace rlhf {

class Llm;

// The built-in few-shot template: three worked grade-school problems (from Wei et al.'s GSM8K
// prompt), each as
//   Q: <question>
//   A: Let's think step by step. <reasoning>. The answer is <N>.
// separated by blank lines, then "Q: {question}\nA: Let's think step by step." for the model
// to continue.
extern const char* const kCotTemplate;

struct CotOptions {
  std::string tmpl = kCotTemplate;    // with {question}
  int n = 1;                          // reasoning paths per question; > 1 = self-consistency
  std::optional<float> temperature;   // unset: 0 (greedy) for n = 1, 0.7 for n > 1
  int64_t max_tokens = 256;
  std::vector<std::string> stop = {"\nQ:"};  // the model starting the next few-shot question
  uint64_t seed = 0;
};

struct CotPath {
  std::string text;    // the generated reasoning
  std::string answer;  // extracted and normalised; "" when none
};

struct CotResult {
  std::string answer;                // the majority of the paths' answers ("" when no path has one)
  std::vector<CotPath> paths;
  std::map<std::string, int> votes;  // answer -> paths that gave it (empty answers do not vote)
};

// The text after the last "The answer is" (case-insensitive) up to the end of its line or
// sentence (". "), trimmed, without a leading ':' or a final '.'; else the last number in the
// text; else "". Normalised.
std::string extract_answer(const std::string& text);

// Numbers in one spelling so equal answers vote together: "1,234" -> "1234", "12.0" -> "12",
// "-0.50" -> "-0.5", "007" -> "7", "$18" -> "18". Other text is only trimmed.
std::string normalize_answer(const std::string& answer);

// The most frequent non-empty answer, ties going to the one seen first; "" when there is none.
std::string majority_vote(const std::vector<std::string>& answers);

// One Llm::complete call for all questions (n paths each).
std::vector<CotResult> run_cot(Llm& llm, const std::vector<std::string>& questions, const CotOptions& options);

// Batch mode's fields: answer, reasoning (the first path's text), paths [{text, answer}], votes.
nlohmann::json to_json(const CotResult& r);

}  // namespace rlhf
