// Program-aided answers (PAL, Gao et al. 2022): the model writes a Lua program for the question,
// the sandbox runs it, and the program's return value is the answer -- the model reasons, the
// interpreter computes.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sandbox/lua_sandbox.h"

namespace rlhf {

class Llm;

// The built-in few-shot template: three word problems from Gao et al.'s GSM8K prompt, each as
//   Q: <question>
//   (blank line)
//   ```lua
//   local <name> = <value>   -- one named quantity per line, as in PAL's Python
//   ...
//   return <answer>
//   ```
// separated by blank lines, then "Q: {question}\n\n```lua\n" for the model to continue.
extern const char* const kPalTemplate;

struct PalOptions {
  std::string tmpl = kPalTemplate;    // with {question}
  int64_t max_tokens = 256;
  float temperature = 0;              // greedy
  std::vector<std::string> stop = {"\n```"};
  uint64_t seed = 0;
  SandboxLimits limits;
};

struct PalResult {
  std::string answer;   // the return value; "" unless status is "ok"
  std::string program;
  std::string status;   // "ok", "error: <sandbox error>" ("error: no program" for a blank one),
                        // "instruction limit", "memory limit", "time limit"
  std::string output;   // what print() wrote
};

// The program in a completion: everything before the first line that is "```" (the stop string
// usually cut there already; an endpoint may not honour it).
std::string extract_program(const std::string& text);

// Runs one program and fills answer/status/output.
PalResult run_program(const std::string& program, const SandboxLimits& limits);

// One Llm::complete call for all questions, then each program in the sandbox.
std::vector<PalResult> run_pal(Llm& llm, const std::vector<std::string>& questions, const PalOptions& options);

// Batch mode's fields: answer, program, status, output.
nlohmann::json to_json(const PalResult& r);

}  // namespace rlhf
