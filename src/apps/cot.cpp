#include "apps/cot.h"

#include <algorithm>
#include <regex>

#include "apps/app_io.h"
#include "apps/llm.h"
#include "core/error.h"

namespace rlhf {

const char* const kCotTemplate =
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
    "there will be 21 trees. How many trees did the grove workers plant today?\n"
    "A: Let's think step by step. There are 15 trees originally. Then there were 21 trees after some more were "
    "planted. So there must have been 21 - 15 = 6. The answer is 6.\n"
    "\n"
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?\n"
    "A: Let's think step by step. There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.\n"
    "\n"
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?\n"
    "A: Let's think step by step. Originally, Leah had 32 chocolates. Her sister had 42. So in total they had "
    "32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39.\n"
    "\n"
    "Q: {question}\n"
    "A: Let's think step by step.";

namespace {

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// A number as people write it: optional sign, digits with optional thousands commas, optional
// decimals ("1,234.50", "-3", "12").
const std::regex& number_re() {
  static const std::regex re(R"([-+]?\d+(?:,\d{3})*(?:\.\d+)?)");
  return re;
}

}  // namespace

std::string normalize_answer(const std::string& answer) {
  std::string s = trim(answer);
  const bool dollars = !s.empty() && s[0] == '$';
  if (!std::regex_match(s.begin() + dollars, s.end(), number_re())) return s;
  std::string digits;
  for (char c : s.substr(dollars))
    if (c != ',' && c != '+') digits += c;
  const bool negative = digits[0] == '-';
  if (negative) digits.erase(0, 1);
  if (digits.find('.') != std::string::npos) {  // "12.50" -> "12.5", "12.0" -> "12"
    digits.erase(digits.find_last_not_of('0') + 1);
    if (digits.back() == '.') digits.pop_back();
  }
  size_t zeros = 0;  // "007" -> "7", "0.5" stays
  while (zeros + 1 < digits.size() && digits[zeros] == '0' && digits[zeros + 1] != '.') ++zeros;
  digits.erase(0, zeros);
  return (negative && digits != "0" ? "-" : "") + digits;
}

std::string extract_answer(const std::string& text) {
  static const std::string marker = "the answer is";
  const auto at = lower(text).rfind(marker);
  if (at != std::string::npos) {
    std::string rest = text.substr(at + marker.size());
    rest = rest.substr(0, rest.find('\n'));
    rest = trim(rest.substr(0, rest.find(". ")));  // the sentence ends; "3.5" does not end it
    if (!rest.empty() && rest[0] == ':') rest = trim(rest.substr(1));
    if (!rest.empty() && rest.back() == '.') rest.pop_back();
    rest = trim(rest);
    if (!rest.empty()) return normalize_answer(rest);
  }
  std::string last;
  for (std::sregex_iterator it(text.begin(), text.end(), number_re()), end; it != end; ++it) last = it->str();
  return normalize_answer(last);
}

std::string majority_vote(const std::vector<std::string>& answers) {
  std::string best;
  int best_count = 0;
  for (size_t i = 0; i < answers.size(); ++i) {
    if (answers[i].empty()) continue;
    const int count = static_cast<int>(std::count(answers.begin(), answers.end(), answers[i]));
    if (count > best_count) best = answers[i], best_count = count;  // strictly more: the earliest wins ties
  }
  return best;
}

std::vector<CotResult> run_cot(Llm& llm, const std::vector<std::string>& questions, const CotOptions& options) {
  check(options.n >= 1, "cot: --n must be >= 1");
  const float temperature = options.temperature.value_or(options.n > 1 ? 0.7f : 0.0f);
  check(options.n == 1 || temperature > 0, "cot: self-consistency (--n > 1) needs --temperature > 0");
  std::vector<std::string> prompts;
  for (const auto& q : questions) prompts.push_back(fill_template(options.tmpl, {{"question", q}}));
  CompletionParams params;
  params.max_tokens = options.max_tokens;
  params.temperature = temperature;
  params.stop = options.stop;
  params.seed = options.seed;
  params.n = options.n;
  const auto completions = llm.complete(prompts, params);
  check(completions.size() == questions.size(), "cot: " + llm.describe() + " returned a wrong number of completions");

  std::vector<CotResult> results(questions.size());
  for (size_t i = 0; i < questions.size(); ++i) {
    std::vector<std::string> answers;
    for (const auto& c : completions[i]) {
      results[i].paths.push_back({c.text, extract_answer(c.text)});
      answers.push_back(results[i].paths.back().answer);
      if (!answers.back().empty()) ++results[i].votes[answers.back()];
    }
    results[i].answer = majority_vote(answers);
  }
  return results;
}

nlohmann::json to_json(const CotResult& r) {
  nlohmann::json paths = nlohmann::json::array();
  for (const auto& p : r.paths) paths.push_back({{"text", p.text}, {"answer", p.answer}});
  return {{"answer", r.answer},
          {"reasoning", r.paths.empty() ? "" : r.paths[0].text},
          {"paths", paths},
          {"votes", r.votes}};
}

}  // namespace rlhf
