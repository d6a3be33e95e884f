// The reward terms and their weighted sum: the spec parsed and its requirements checked before
// anything loads, then each term computed over a batch and combined.
#include "rewards/rewards.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <unordered_map>

#include "apps/app_io.h"  // fill_template, trim
#include "apps/llm.h"
#include "core/error.h"
#include "data/datasets.h"
#include "feedback/ai_feedback.h"
#include "feedback/labeler.h"
#include "model/reward_model.h"

using json = nlohmann::json;

namespace rlhf {

namespace {

const std::vector<std::string> kTerms = {"model", "exact_answer", "lua_tests", "lexicon", "judge", "format"};

std::string known_terms() {
  std::string s;
  for (const auto& t : kTerms) s += (s.empty() ? "" : ", ") + t;
  return s;
}

bool uses(const std::vector<RewardTerm>& terms, const std::string& name) {
  for (const auto& t : terms)
    if (t.name == name) return true;
  return false;
}

std::regex compile(const std::string& pattern, const std::string& setting) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error("reward: " + setting + " '" + pattern + "' is not a valid regex: " + e.what());
  }
}

// libstdc++'s matcher recurses, and throws error_complexity / error_stack on a match it cannot
// finish: for a response that is no answer (0), never a crash.
std::optional<std::string> last_match(const std::string& response, const std::regex& re) {
  std::optional<std::string> out;
  try {
    for (auto it = std::sregex_iterator(response.begin(), response.end(), re); it != std::sregex_iterator(); ++it)
      out = it->size() > 1 ? (*it)[1].str() : it->str();
  } catch (const std::regex_error&) {
    return std::nullopt;
  }
  return out;
}

bool search(const std::string& response, const std::regex& re) {
  try {
    return std::regex_search(response, re);
  } catch (const std::regex_error&) {
    return false;
  }
}

// The text as a number, thousands separators dropped; nullopt when it is not one.
std::optional<double> as_number(std::string s) {
  s = trim(s);
  std::erase(s, ',');
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(x) || std::isspace(static_cast<unsigned char>(s[0])))
    return std::nullopt;
  return x;
}

double exact_answer_with(const std::string& response, const json& gold, const std::regex& re) {
  const auto answer = last_match(response, re);
  return answer && answers_equal(*answer, gold) ? 1.0 : 0.0;
}

std::string first_line_of(const std::string& s, size_t n = 60) {
  std::string t = one_line(s);
  return t.size() > n ? t.substr(0, n) + "..." : t;
}

// prompt text -> its row, for the terms that read fields beside the prompt. Every row must
// hold them, and a prompt text repeated in the file must carry the same values each time (the
// reward sees the text only).
std::unordered_map<std::string, PromptRow> read_rows(const RewardSpec& spec, const std::vector<RewardTerm>& terms,
                                                     const std::string& path, bool skip_bad) {
  std::vector<std::pair<std::string, std::string>> fields;  // (field, term)
  if (uses(terms, "exact_answer")) fields.emplace_back(spec.answer_field, "exact_answer");
  if (uses(terms, "lua_tests")) fields.emplace_back(spec.tests_field, "lua_tests");
  std::unordered_map<std::string, PromptRow> rows;
  if (fields.empty()) return rows;
  check(!path.empty(), "reward: the prompts file is needed to read the gold answers and tests");
  for (auto& r : read_prompt_rows(path, {skip_bad})) {
    for (const auto& [field, term] : fields) {
      const auto it = r.row.find(field);
      check(it != r.row.end(), "reward: " + term + " reads the field '" + field + "' of every prompt; " + r.where +
                                   " has none (set " + (term == "exact_answer" ? "answer_field" : "tests_field") + ")");
      if (term == "exact_answer") {
        check(it->is_number() || it->is_string(),
              r.where + ": the gold answer (field '" + field + "') must be a number or a string, got " + it->dump());
      } else {
        bool ok = it->is_array() && !it->empty();
        if (ok)
          for (const auto& t : *it) ok = ok && t.is_string();
        check(ok, r.where + ": the tests (field '" + field + "') must be a non-empty list of Lua snippets (strings), got " +
                      it->dump());
      }
    }
    const auto [at, fresh] = rows.try_emplace(r.prompt, r);
    if (!fresh)
      for (const auto& [field, term] : fields)
        check(at->second.row.at(field) == r.row.at(field),
              "reward: " + r.where + ": the prompt '" + first_line_of(r.prompt) + "' appears at " + at->second.where +
                  " with a different '" + field + "' (" + at->second.row.at(field).dump() + " vs " + r.row.at(field).dump() +
                  "); the reward tells prompts apart by their text");
  }
  return rows;
}

SandboxLimits limits_of(const RewardSpec& spec) {
  SandboxLimits l;
  l.max_instructions = spec.lua_max_instructions;
  l.max_seconds = spec.lua_max_seconds;
  return l;
}

const std::string& judge_template_of(const RewardSpec& spec) {
  static const std::string builtin = kDefaultJudgeTemplate;
  return spec.judge_template.empty() ? builtin : spec.judge_template;
}

}  // namespace

std::vector<RewardTerm> parse_reward_terms(const std::string& spec) {
  // term := [number "*"] name; spec := term (("+" | "-") term)*
  std::vector<RewardTerm> terms;
  const auto bad = [&](const std::string& why) { return Error("reward '" + spec + "': " + why); };
  size_t i = 0;
  const auto skip = [&] {
    while (i < spec.size() && std::isspace(static_cast<unsigned char>(spec[i]))) ++i;
  };
  double sign = 1;
  skip();
  if (i < spec.size() && spec[i] == '-') sign = -1, ++i;
  for (;;) {
    skip();
    double weight = 1;
    if (i < spec.size() && (std::isdigit(static_cast<unsigned char>(spec[i])) || spec[i] == '.')) {
      char* end = nullptr;
      weight = std::strtod(spec.c_str() + i, &end);
      const size_t stop = static_cast<size_t>(end - spec.c_str());
      if (stop == i || !std::isfinite(weight)) throw bad("bad weight at '" + spec.substr(i) + "'");
      i = stop;
      skip();
      if (i >= spec.size() || spec[i] != '*')
        throw bad("expected '*' after the weight " + spec.substr(0, i) + " (write e.g. 0.2*format)");
      ++i;
      skip();
    }
    const size_t start = i;
    while (i < spec.size() && (std::isalnum(static_cast<unsigned char>(spec[i])) || spec[i] == '_')) ++i;
    const std::string name = spec.substr(start, i - start);
    if (name.empty())
      throw bad(i >= spec.size() ? "expected a term at the end" : "expected a term at '" + spec.substr(i) + "'");
    if (std::find(kTerms.begin(), kTerms.end(), name) == kTerms.end())
      throw bad("unknown term '" + name + "' (terms: " + known_terms() + ")");
    if (uses(terms, name)) throw bad("the term '" + name + "' appears twice");
    terms.push_back({name, sign * weight});
    skip();
    if (i >= spec.size()) break;
    if (spec[i] != '+' && spec[i] != '-') throw bad("expected + or - at '" + spec.substr(i) + "'");
    sign = spec[i] == '-' ? -1 : 1;
    ++i;
  }
  return terms;
}

namespace {

// The settings each term needs (the prompts file's rows aside).
void check_settings(const RewardSpec& spec, const std::vector<RewardTerm>& terms, const RewardContext& ctx) {
  if (uses(terms, "model"))
    check(!ctx.reward_model.empty(), "reward: the term 'model' needs `reward_model` (a reward model folder, rlhf rm train)");
  if (uses(terms, "exact_answer")) {
    check(!spec.answer_field.empty(), "reward: exact_answer needs `answer_field`");
    compile(spec.answer_pattern, "answer_pattern");
  }
  if (uses(terms, "lua_tests")) {
    check(!spec.tests_field.empty(), "reward: lua_tests needs `tests_field`");
    check(spec.lua_max_instructions > 0, "reward: lua_max_instructions must be > 0, got " +
                                             std::to_string(spec.lua_max_instructions));
    check(std::isfinite(spec.lua_max_seconds) && spec.lua_max_seconds > 0,
          "reward: lua_max_seconds must be > 0, got " + std::to_string(spec.lua_max_seconds));
  }
  if (uses(terms, "format")) {
    check(!spec.format_pattern.empty(), "reward: the term 'format' needs `format_pattern` (a regex)");
    compile(spec.format_pattern, "format_pattern");
  }
  if (uses(terms, "judge")) {
    check(!spec.judge_model.empty() || ctx.judge,
          "reward: the term 'judge' needs `judge_model` (a model path or an OpenAI-compatible endpoint URL)");
    check(judge_template_of(spec).find("{response}") != std::string::npos,
          "reward: judge_template must contain {response} (the judge would not see the response)");
    check(spec.judge_method == "auto" || spec.judge_method == "logprobs" || spec.judge_method == "votes",
          "reward: judge_method must be auto, logprobs or votes, got '" + spec.judge_method + "'");
  }
}

}  // namespace

void check_reward_spec(const RewardSpec& spec, const std::string& prompts_path, const RewardContext& ctx) {
  const auto terms = parse_reward_terms(spec.terms);
  check_settings(spec, terms, ctx);
  read_rows(spec, terms, prompts_path, ctx.skip_bad);
}

// ---- the terms ---------------------------------------------------------------------------

std::optional<std::string> extract_answer(const std::string& response, const std::string& pattern) {
  return last_match(response, compile(pattern, "answer_pattern"));
}

bool answers_equal(const std::string& answer, const json& gold) {
  const std::string g = gold.is_string() ? gold.get<std::string>() : gold.dump();
  const auto a = as_number(answer), b = as_number(g);
  if (a && b) return std::abs(*a - *b) <= 1e-9 * std::max({1.0, std::abs(*a), std::abs(*b)});
  return trim(answer) == trim(g);
}

double exact_answer_score(const std::string& response, const json& gold, const std::string& pattern) {
  return exact_answer_with(response, gold, compile(pattern, "answer_pattern"));
}

std::string lua_program(const std::string& response) {
  const size_t fence = response.find("```lua");
  if (fence == std::string::npos) return response;
  const size_t start = response.find('\n', fence);
  if (start == std::string::npos) return "";
  const size_t end = response.find("```", start + 1);
  return response.substr(start + 1, end == std::string::npos ? std::string::npos : end - start - 1);
}

double lua_tests_score(const std::string& response, const std::vector<std::string>& tests, const SandboxLimits& limits) {
  if (tests.empty()) return 0;
  const std::string program = lua_program(response);
  // A program that does not run alone fails every test: one run instead of one per test (an
  // endless loop costs its time limit once).
  if (!run_lua(program, limits).ok) return 0;
  int passed = 0;
  for (const auto& t : tests) passed += run_lua(program + "\n" + t, limits).ok;
  return double(passed) / double(tests.size());
}

double format_score(const std::string& response, const std::string& pattern) {
  return search(response, compile(pattern, "format_pattern")) ? 1.0 : 0.0;
}

std::vector<double> judge_scores(FeedbackModel& judge, const std::string& tmpl, const std::vector<std::string>& prompts,
                                 const std::vector<std::string>& responses) {
  check(prompts.size() == responses.size(), "judge: " + std::to_string(prompts.size()) + " prompts for " +
                                                 std::to_string(responses.size()) + " responses");
  std::vector<std::string> questions;
  for (size_t i = 0; i < prompts.size(); ++i)
    questions.push_back(fill_template(tmpl, {{"prompt", prompts[i]}, {"response", trim(responses[i])}}));
  const auto choices = judge.choose(questions, {"A", "B"});
  check(choices.size() == questions.size(), judge.describe() + ": answered " + std::to_string(choices.size()) + " of " +
                                                std::to_string(questions.size()) + " questions");
  std::vector<double> out;
  for (const auto& c : choices) {
    check(c.probs.size() == 2, judge.describe() + ": expected two option probabilities");
    out.push_back(c.probs[0]);
  }
  return out;
}

// ---- the weighted sum ----------------------------------------------------------------------

struct Reward::State {
  RewardSpec spec;
  std::vector<RewardTerm> terms;
  std::string prompts_path;
  std::unordered_map<std::string, PromptRow> rows;
  std::optional<std::regex> answer_re, format_re;
  SandboxLimits limits;
  int64_t max_length = 512;
  std::shared_ptr<LoadedModel> rm;
  std::shared_ptr<FeedbackModel> judge;
  SentimentLexicon lexicon = SentimentLexicon::builtin();
  std::vector<std::vector<double>> last;  // (terms, B)

  const json& row(const std::string& prompt) const {
    const auto it = rows.find(prompt);
    check(it != rows.end(), "reward: the prompt '" + first_line_of(prompt) + "' is not in " + prompts_path +
                                " (the verifiers read its gold fields there)");
    return it->second.row;
  }

  std::vector<double> term(const std::string& name, const std::vector<std::string>& prompts,
                           const std::vector<std::string>& responses) const {
    const size_t B = responses.size();
    std::vector<double> out(B);
    if (name == "model") {
      std::vector<std::pair<std::string, std::string>> texts;
      for (size_t b = 0; b < B; ++b) texts.emplace_back(prompts[b], responses[b]);
      return score_texts(*rm, texts, max_length);
    }
    if (name == "judge") return judge_scores(*judge, judge_template_of(spec), prompts, responses);
    for (size_t b = 0; b < B; ++b) {
      if (name == "exact_answer") {
        out[b] = exact_answer_with(responses[b], row(prompts[b]).at(spec.answer_field), *answer_re);
      } else if (name == "lua_tests") {
        out[b] = lua_tests_score(responses[b], row(prompts[b]).at(spec.tests_field).get<std::vector<std::string>>(), limits);
      } else if (name == "lexicon") {
        out[b] = lexicon.score(responses[b]);
      } else {  // format
        out[b] = search(responses[b], *format_re) ? 1.0 : 0.0;
      }
    }
    return out;
  }
};

Reward make_reward(const RewardSpec& spec, const std::string& prompts_path, const RewardContext& ctx) {
  auto s = std::make_shared<Reward::State>();
  s->spec = spec;
  s->terms = parse_reward_terms(spec.terms);
  check_settings(spec, s->terms, ctx);
  s->prompts_path = prompts_path;
  s->rows = read_rows(spec, s->terms, prompts_path, ctx.skip_bad);
  s->limits = limits_of(spec);
  s->max_length = ctx.max_length;
  if (uses(s->terms, "exact_answer")) s->answer_re = compile(spec.answer_pattern, "answer_pattern");
  if (uses(s->terms, "format")) s->format_re = compile(spec.format_pattern, "format_pattern");
  if (uses(s->terms, "model")) s->rm = std::make_shared<LoadedModel>(load_reward_model(ctx.reward_model, ctx.load));
  if (uses(s->terms, "judge")) {
    s->judge = ctx.judge;
    if (!s->judge) {
      FeedbackOptions fo;
      fo.method = spec.judge_method;
      s->judge = std::make_shared<FeedbackModel>(open_llm(spec.judge_model, ctx.load), fo);
    }
  }
  Reward r;
  r.state_ = std::move(s);
  return r;
}

std::vector<double> Reward::scores(const std::vector<std::string>& prompts, const std::vector<std::string>& responses,
                                   const std::vector<std::vector<int32_t>>&) {
  check(prompts.size() == responses.size(), "reward: " + std::to_string(prompts.size()) + " prompts for " +
                                                std::to_string(responses.size()) + " responses");
  auto& s = *state_;
  s.last.clear();
  std::vector<double> out(responses.size(), 0.0);
  for (const auto& t : s.terms) {
    auto v = s.term(t.name, prompts, responses);
    check(v.size() == responses.size(), "reward: the term '" + t.name + "' gave " + std::to_string(v.size()) +
                                            " values for " + std::to_string(responses.size()) + " responses");
    for (size_t b = 0; b < v.size(); ++b) out[b] += t.weight * v[b];
    s.last.push_back(std::move(v));
  }
  return out;
}

const std::vector<std::vector<double>>& Reward::last_term_scores() const { return state_->last; }

std::map<std::string, double> Reward::last_means() const {
  std::map<std::string, double> m;
  for (size_t i = 0; i < state_->last.size(); ++i) {
    const auto& v = state_->last[i];
    double sum = 0;
    for (double x : v) sum += x;
    m[state_->terms[i].name] = v.empty() ? 0.0 : sum / double(v.size());
  }
  return m;
}

const std::vector<RewardTerm>& Reward::terms() const { return state_->terms; }

bool Reward::model_only() const { return state_->terms.size() == 1 && state_->terms[0].name == "model"; }

}  // namespace rlhf
