#include "apps/pal.h"

#include "apps/app_io.h"
#include "apps/llm.h"
#include "core/error.h"

namespace rlhf {

const char* const kPalTemplate =
    "Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
    "\n"
    "```lua\n"
    "local money_initial = 23\n"
    "local bagels = 5\n"
    "local bagel_cost = 3\n"
    "local money_spent = bagels * bagel_cost\n"
    "local money_left = money_initial - money_spent\n"
    "return money_left\n"
    "```\n"
    "\n"
    "Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
    "balls did he have at the end of wednesday?\n"
    "\n"
    "```lua\n"
    "local golf_balls_initial = 58\n"
    "local golf_balls_lost_tuesday = 23\n"
    "local golf_balls_lost_wednesday = 2\n"
    "local golf_balls_left = golf_balls_initial - golf_balls_lost_tuesday - golf_balls_lost_wednesday\n"
    "return golf_balls_left\n"
    "```\n"
    "\n"
    "Q: There were nine computers in the server room. Five more computers were installed each day, from monday to "
    "thursday. How many computers are now in the server room?\n"
    "\n"
    "```lua\n"
    "local computers_initial = 9\n"
    "local computers_per_day = 5\n"
    "local num_days = 4  -- monday, tuesday, wednesday, thursday\n"
    "local computers_added = computers_per_day * num_days\n"
    "local computers_total = computers_initial + computers_added\n"
    "return computers_total\n"
    "```\n"
    "\n"
    "Q: {question}\n"
    "\n"
    "```lua\n";

std::string extract_program(const std::string& text) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line == "```") return text.substr(0, start);
    start = end + 1;
  }
  return text;
}

PalResult run_program(const std::string& program, const SandboxLimits& limits) {
  PalResult r;
  r.program = program;
  if (program.find_first_not_of(" \t\r\n") == std::string::npos) {  // would "succeed" with no answer
    r.status = "error: no program";
    return r;
  }
  auto run = run_lua(program, limits);
  r.output = std::move(run.output);
  if (run.ok) {
    r.answer = std::move(run.value);
    r.status = "ok";
    return r;
  }
  for (const char* limit : {"instruction limit", "memory limit", "time limit"})
    if (run.error.rfind(limit, 0) == 0) {
      r.status = limit;
      return r;
    }
  r.status = "error: " + run.error;
  return r;
}

std::vector<PalResult> run_pal(Llm& llm, const std::vector<std::string>& questions, const PalOptions& options) {
  std::vector<std::string> prompts;
  for (const auto& q : questions) prompts.push_back(fill_template(options.tmpl, {{"question", q}}));
  CompletionParams params;
  params.max_tokens = options.max_tokens;
  params.temperature = options.temperature;
  params.stop = options.stop;
  params.seed = options.seed;
  const auto completions = llm.complete(prompts, params);
  check(completions.size() == questions.size(), "pal: " + llm.describe() + " returned a wrong number of completions");
  std::vector<PalResult> results;
  for (const auto& c : completions) {
    check(!c.empty(), "pal: " + llm.describe() + " returned no completion for a prompt");
    results.push_back(run_program(extract_program(c[0].text), options.limits));
  }
  return results;
}

nlohmann::json to_json(const PalResult& r) {
  return {{"answer", r.answer}, {"program", r.program}, {"status", r.status}, {"output", r.output}};
}

}  // namespace rlhf
