// An embedded Lua 5.4 interpreter for code written by a model (PAL programs, the ReAct
// calculator): only the safe libraries, an instruction budget, a memory cap and a wall-clock
// limit. A hostile or broken program ends with a reason; it never takes the process down.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace rlhf {

struct SandboxLimits {
  int64_t max_instructions = 10'000'000;  // Lua VM instructions (counted in steps of 1000 at most)
  size_t max_memory = 64 << 20;           // bytes the interpreter may hold at once
  double max_seconds = 2;                 // wall clock, checked with the instruction count
  size_t max_output = 64 << 10;           // bytes of print() output kept; the rest is dropped
};

struct SandboxResult {
  bool ok = false;
  std::string value;   // the first return value as text (integral numbers "%d", else "%.15g"; nil -> "")
  std::string error;   // the reason when !ok: "instruction limit exceeded (N)", "memory limit exceeded (N
                       // bytes)", "time limit exceeded (S s)", "syntax error: ...", "runtime error: ..."
  std::string output;  // what print() wrote, at most max_output bytes
};

// Runs `code` as a Lua chunk in a fresh interpreter (thread-safe: nothing is shared between
// calls). Available: the base library (print captured; load of text chunks only; no dofile,
// loadfile, warn; collectgarbage only "collect"/"count"/"step"/"isrunning"; setmetatable refuses
// __gc, whose finalizers would run with the limits off), string, table, math and utf8. No io,
// os, package, debug or coroutine. Return values other than numbers, strings, booleans and nil
// are a runtime error. Caveat: one C call that is slow by itself (a pathological string pattern
// on a long string) is only stopped when it returns; the memory cap bounds how long it can be.
SandboxResult run_lua(const std::string& code, const SandboxLimits& limits = {});

// The ReAct calculator: run_lua("return " + expression).
SandboxResult calculate(const std::string& expression, const SandboxLimits& limits = {});

}  // namespace rlhf
