// ReAct (Yao et al. 2023): the model alternates Thought / Action lines and we answer each
// action with an Observation line, until finish[answer] or the step limit. Tools: search
// over a RAG index (top-1 chunk), lookup of a term in the last retrieved chunk, a Lua
// calculator, finish. The prompt is the template (with {question}) and the trajectory so far:
//   Thought: <text>
//   Action: search[<query>]          (or lookup[<term>], calculate[<expression>], finish[<answer>])
//   Observation: <text>
// Each step generates with the stop string "\nObservation:". A step without a well-formed
// action of a known tool is answered with kInvalidAction and the loop continues.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "apps/llm.h"
#include "apps/rag.h"

namespace rlhf {

// The tools as functions, so tests can script them; react_tools() gives the real ones.
struct ReactTools {
  std::function<std::optional<RagHit>(const std::string& query)> search;   // the best chunk, if any
  std::function<std::string(const std::string& expression)> calculate;    // the value, or "Error: <reason>"
};

// search: BM25 over `index`; calculate: the Lua sandbox (sandbox/lua_sandbox.h).
ReactTools react_tools(RagIndex& index);

extern const char* const kInvalidAction;
// A few-shot template of two trajectories (search, lookup, calculate, finish) then
// "Question: {question}\n"; the model writes the first "Thought:" itself.
extern const char* const kDefaultReactTemplate;

struct ReactOptions {
  std::string prompt_template = kDefaultReactTemplate;
  int max_steps = 6;
};

struct ReactStep {
  int step = 0;             // from 1
  std::string thought;      // the text before the Action line, "Thought:" removed
  std::string action;       // search, lookup, calculate, finish; "invalid" for a malformed step
  std::string argument;     // inside the brackets; a malformed step: the Action line's text, if any
  std::string observation;  // "" for finish
};

struct ReactResult {
  std::string answer;  // finish's argument, trimmed; "" when the steps ran out
  bool finished = false;
  std::vector<ReactStep> steps;
  std::string trajectory;  // the text after the template, as the model saw it
};

// Parses one step's generation (the Thought and Action lines).
ReactStep parse_react_step(const std::string& generated);

// Runs every question to finish or max_steps, stepping all unfinished ones with one
// Llm::complete call per step (params.stop gets "\nObservation:"; n = 1).
std::vector<ReactResult> react(Llm& llm, const ReactTools& tools, const std::vector<std::string>& questions,
                               const ReactOptions& options, CompletionParams params);

// A transcript line: {question_id, step, thought, action, argument, observation}.
nlohmann::json react_step_json(const nlohmann::json& question_id, const ReactStep& step);

}  // namespace rlhf
