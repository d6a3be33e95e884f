#include "apps/react.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "sandbox/lua_sandbox.h"

namespace rlhf {

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t a = s.find_first_not_of(ws);
  return a == std::string::npos ? "" : s.substr(a, s.find_last_not_of(ws) - a + 1);
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Where the first line starting with "Action:" (after spaces) begins, and where it ends.
std::pair<size_t, size_t> action_line(const std::string& text) {
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const size_t first = text.find_first_not_of(" \t", begin);
    if (first < end && text.compare(first, 7, "Action:") == 0) return {begin, end};
    begin = end + 1;
  }
  return {std::string::npos, std::string::npos};
}

// lookup[t]: the sentences of `chunk` (split on ". ") that contain t, case-insensitively.
std::string lookup(const std::string& chunk, const std::string& term) {
  const std::string text = one_line(chunk), t = lower(term);
  std::string found;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find(". ", begin);
    const std::string sentence = end == std::string::npos ? text.substr(begin) : text.substr(begin, end + 1 - begin);
    if (lower(sentence).find(t) != std::string::npos) found += (found.empty() ? "" : " ") + trim(sentence);
    begin = end == std::string::npos ? text.size() : end + 2;
  }
  return found.empty() ? "No sentence with '" + term + "'." : found;
}

}  // namespace

const char* const kInvalidAction =
    "Invalid action. Use search[query], lookup[term], calculate[expression] or finish[answer].";

const char* const kDefaultReactTemplate =
    "Answer the question by interleaving Thought, Action and Observation steps. Actions:\n"
    "search[query] returns the best passage; lookup[term] returns the sentences of that passage with the term;\n"
    "calculate[expression] evaluates arithmetic; finish[answer] gives the final answer.\n"
    "\n"
    "Question: How many years after the Eiffel Tower was completed did the Empire State Building open?\n"
    "Thought: I need the year the Eiffel Tower was completed.\n"
    "Action: search[Eiffel Tower completed]\n"
    "Observation: [eiffel#0] The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n"
    "Thought: Now I need the year the Empire State Building opened.\n"
    "Action: search[Empire State Building opened]\n"
    "Observation: [empire#0] The Empire State Building is in New York. It opened in 1931.\n"
    "Thought: It opened in 1931. The difference is 1931 - 1889.\n"
    "Action: calculate[1931 - 1889]\n"
    "Observation: 42\n"
    "Thought: The answer is 42 years.\n"
    "Action: finish[42]\n"
    "\n"
    "Question: Which city is the Colosseum in?\n"
    "Thought: I should search for the Colosseum.\n"
    "Action: search[Colosseum]\n"
    "Observation: [colosseum#0] The Colosseum could hold about 50,000 spectators. It stands in Rome.\n"
    "Thought: Let me look up where it stands.\n"
    "Action: lookup[stands]\n"
    "Observation: It stands in Rome.\n"
    "Action: finish[Rome]\n"
    "\n"
    "Question: {question}\n";

ReactStep parse_react_step(const std::string& generated) {
  ReactStep s;
  s.action = "invalid";
  const auto [begin, end] = action_line(generated);
  std::string thought = trim(generated.substr(0, std::min(begin, generated.size())));
  if (thought.rfind("Thought:", 0) == 0) thought = trim(thought.substr(8));
  s.thought = thought;
  if (begin == std::string::npos) return s;
  const std::string line = trim(generated.substr(begin, end - begin));
  s.argument = trim(line.substr(7));  // after "Action:"
  const std::string& a = s.argument;
  size_t name_end = 0;
  while (name_end < a.size() && (std::isalpha(static_cast<unsigned char>(a[name_end])) || a[name_end] == '_')) ++name_end;
  const size_t open = a.find_first_not_of(' ', name_end), close = a.rfind(']');
  if (open == std::string::npos || a[open] != '[' || close == std::string::npos || close < open) return s;
  const std::string name = lower(a.substr(0, name_end));
  if (name != "search" && name != "lookup" && name != "calculate" && name != "finish") return s;
  s.action = name;
  s.argument = trim(a.substr(open + 1, close - open - 1));
  return s;
}

std::vector<ReactResult> react(Llm& llm, const ReactTools& tools, const std::vector<std::string>& questions,
                               const ReactOptions& options, CompletionParams params) {
  check(options.max_steps >= 1, "max_steps must be >= 1");
  if (std::find(params.stop.begin(), params.stop.end(), "\nObservation:") == params.stop.end())
    params.stop.push_back("\nObservation:");
  params.n = 1;
  std::vector<ReactResult> results(questions.size());
  std::vector<std::string> heads, last_chunk(questions.size());
  for (const auto& q : questions) heads.push_back(fill_template(options.prompt_template, {{"question", q}}));

  for (int step = 1; step <= options.max_steps; ++step) {
    // 1. one batch of the unfinished questions
    std::vector<size_t> active;
    std::vector<std::string> prompts;
    for (size_t i = 0; i < questions.size(); ++i)
      if (!results[i].finished) {
        active.push_back(i);
        prompts.push_back(heads[i] + results[i].trajectory);
      }
    if (active.empty()) break;
    auto outs = llm.complete(prompts, params);
    check(outs.size() == prompts.size(), llm.describe() + ": " + std::to_string(outs.size()) + " completions for " +
                                             std::to_string(prompts.size()) + " prompts");
    // 2. parse each action and run its tool
    for (size_t a = 0; a < active.size(); ++a) {
      auto& r = results[active[a]];
      const std::string gen = outs[a].empty() ? "" : outs[a][0].text;
      ReactStep s = parse_react_step(gen);
      s.step = step;
      if (s.action == "finish") {
        r.answer = s.argument;
        r.finished = true;
      } else if (s.action == "search") {
        const auto hit = tools.search(s.argument);
        if (hit) last_chunk[active[a]] = hit->text;
        s.observation = hit ? "[" + hit->id + "] " + hit->text : "No results.";
      } else if (s.action == "lookup") {
        s.observation = lookup(last_chunk[active[a]], s.argument);
      } else if (s.action == "calculate") {
        s.observation = tools.calculate(s.argument);
      } else {
        s.observation = kInvalidAction;
      }
      s.observation = trim(one_line(s.observation));
      // 3. the model's own text up to its Action line, then the observation
      const size_t end = action_line(gen).second;
      std::string kept = gen.substr(0, std::min(end, gen.size()));
      kept.erase(kept.find_last_not_of(" \t\r\n") + 1);
      if (!kept.empty()) r.trajectory += kept + "\n";
      if (!r.finished) r.trajectory += "Observation: " + s.observation + "\n";
      r.steps.push_back(std::move(s));
    }
  }
  return results;
}

nlohmann::json react_step_json(const nlohmann::json& question_id, const ReactStep& s) {
  return {{"question_id", question_id}, {"step", s.step},         {"thought", s.thought},
          {"action", s.action},         {"argument", s.argument}, {"observation", s.observation}};
}

ReactTools react_tools(RagIndex& index) {
  ReactTools t;
  t.search = [&index](const std::string& query) -> std::optional<RagHit> {
    auto hits = index.search(query, 1);
    if (hits.empty()) return std::nullopt;
    return hits[0];
  };
  t.calculate = [](const std::string& expression) {
    const auto r = calculate(expression);
    return r.ok ? r.value : "Error: " + r.error;
  };
  return t;
}

}  // namespace rlhf
