// The Lua sandbox against hostile programs: each is stopped with its own reason, and a normal
// program still runs in the same process afterwards.
#include <gtest/gtest.h>

#include <string>

#include "sandbox/lua_sandbox.h"

using namespace rlhf;

namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Small limits so the hostile programs end in milliseconds.
SandboxLimits small() {
  SandboxLimits l;
  l.max_instructions = 2'000'000;
  l.max_memory = 8 << 20;
  l.max_seconds = 30;  // generous: these tests are about the other limits
  return l;
}

// After a hostile program, the next one runs normally in the same process.
void expect_still_works() {
  auto r = run_lua("local s = 0 for i = 1, 100 do s = s + i end return s", small());
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.value, "5050");
}

void expect_stopped(const std::string& code, const std::string& reason, const SandboxLimits& limits = small()) {
  auto r = run_lua(code, limits);
  EXPECT_FALSE(r.ok) << code;
  EXPECT_TRUE(contains(r.error, reason)) << code << " -> " << r.error;
  expect_still_works();
}

}  // namespace

TEST(LuaSandbox, ReturnValuesAsText) {
  EXPECT_EQ(run_lua("return 6 * 7").value, "42");
  EXPECT_EQ(run_lua("return 12.0").value, "12");
  EXPECT_EQ(run_lua("return 1 / 4").value, "0.25");
  EXPECT_EQ(run_lua("return 'forty' .. 'two'").value, "fortytwo");
  EXPECT_EQ(run_lua("return 1 < 2").value, "true");
  auto nil = run_lua("local x = 1");
  EXPECT_TRUE(nil.ok);
  EXPECT_EQ(nil.value, "");
  auto table = run_lua("return {}");
  EXPECT_FALSE(table.ok);
  EXPECT_TRUE(contains(table.error, "returned a table")) << table.error;
  EXPECT_EQ(calculate("(3 + 4) * 2").value, "14");
  EXPECT_EQ(calculate("math.floor(7 / 2)").value, "3");
}

TEST(LuaSandbox, SyntaxAndRuntimeErrorsNameTheirKind) {
  auto syntax = run_lua("return 1 +");
  EXPECT_FALSE(syntax.ok);
  EXPECT_EQ(syntax.error.rfind("syntax error: ", 0), 0u) << syntax.error;
  auto runtime = run_lua("local t = nil\nreturn t.x");
  EXPECT_FALSE(runtime.ok);
  EXPECT_EQ(runtime.error.rfind("runtime error: program:2:", 0), 0u) << runtime.error;
  EXPECT_EQ(run_lua("error({})").error, "runtime error: (error object is a table value)");
  expect_still_works();
}

TEST(LuaSandbox, EndlessLoopHitsTheInstructionLimit) {
  expect_stopped("while true do end", "instruction limit exceeded (2000000)");
}

TEST(LuaSandbox, PcallCannotSwallowTheLimit) {
  expect_stopped("while true do pcall(function() while true do end end) end", "instruction limit exceeded");
  expect_stopped("local function f() return xpcall(f, f) end while true do f() end", "instruction limit exceeded");
}

TEST(LuaSandbox, GrowingTableHitsTheMemoryLimit) {
  expect_stopped("local t = {} local i = 0 while true do i = i + 1 t[i] = {i} end", "memory limit exceeded (8388608 bytes)");
  // A memory error caught by pcall is the program's business; it ends normally.
  auto r = run_lua("return pcall(string.rep, 'x', 1e8)", small());
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.value, "false");
}

TEST(LuaSandbox, HugeStringRepHitsTheMemoryLimitNotTheProcess) {
  expect_stopped("return string.rep('x', 1e9)", "memory limit exceeded");
  expect_stopped("return string.rep('x', 1e10)", "resulting string too large");  // Lua's own 2 GiB bound
  expect_stopped("local s = 'x' while true do s = s .. s end", "memory limit exceeded");
  expect_stopped("return string.rep('xx', 2^62)", "resulting string too large");  // size overflow
}

TEST(LuaSandbox, NoOsIoPackageOrDebug) {
  expect_stopped("os.execute('touch /tmp/pwned')", "attempt to index a nil value (global 'os')");
  expect_stopped("return io.open('/etc/passwd'):read('a')", "attempt to index a nil value (global 'io')");
  expect_stopped("return require('os')", "attempt to call a nil value (global 'require')");
  expect_stopped("return debug.getinfo(1)", "global 'debug'");
  expect_stopped("dofile('/etc/passwd')", "global 'dofile'");
  expect_stopped("loadfile('/etc/passwd')", "global 'loadfile'");
  expect_stopped("return package.loadlib('libc.so.6', 'system')", "global 'package'");
  expect_stopped("collectgarbage('stop')", "not allowed in the sandbox");
}

TEST(LuaSandbox, LoadTakesSourceTextOnly) {
  auto text = run_lua("return load('return 2 + 3')()");
  EXPECT_TRUE(text.ok) << text.error;
  EXPECT_EQ(text.value, "5");
  // load returns nil plus the message for a binary chunk; the assert raises it.
  expect_stopped("return assert(load(string.dump(function() return 1 end), 'x', 'b'))()",
                 "attempt to load a binary chunk");
  expect_stopped("return assert(load('\\27Lua\\x54\\0garbage'))()", "attempt to load a binary chunk");
}

TEST(LuaSandbox, DeepRecursionIsStopped) {
  const std::string lua_stack = "local function f(n) return 1 + f(n + 1) end return f(1)";
  expect_stopped(lua_stack, "memory limit exceeded");  // the Lua stack outgrows 8 MiB first
  expect_stopped(lua_stack, "stack overflow", SandboxLimits{});  // within 64 MiB: Lua's own limit
  expect_stopped("local function f(s) return s:gsub('.', f) end return f('xx')", "stack overflow");  // C stack
}

TEST(LuaSandbox, MetamethodErrorsStayInside) {
  expect_stopped("setmetatable({}, {__gc = function() while true do end end})", "__gc metamethods are not allowed");
  expect_stopped("do local x <close> = setmetatable({}, {__close = function() error('boom') end}) end", "boom");
  expect_stopped("do local x <close> = setmetatable({}, {__close = function() while true do end end}) end",
                 "instruction limit exceeded");
  expect_stopped("print(setmetatable({}, {__tostring = function() error('bad tostring') end}))", "bad tostring");
}

TEST(LuaSandbox, TimeLimitStopsExpensiveInstructions) {
  SandboxLimits l = small();
  l.max_instructions = int64_t(1) << 60;
  l.max_seconds = 0.05;
  // Few instructions, each a long C call: only the clock stops it.
  expect_stopped("local s = string.rep('ab', 1e6) while true do local u = s:upper() end", "time limit exceeded (0.05 s)", l);
}

TEST(LuaSandbox, PrintIsCapturedUpToTheCap) {
  auto r = run_lua("print('a', 1, true) print(2.5) return 1");
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.output, "a\t1\ttrue\n2.5\n");
  SandboxLimits l = small();
  l.max_output = 100;
  auto flood = run_lua("for i = 1, 10000 do print('line', i) end return 'done'", l);
  EXPECT_TRUE(flood.ok) << flood.error;
  EXPECT_EQ(flood.value, "done");
  EXPECT_EQ(flood.output.size(), 100u);
  EXPECT_EQ(flood.output.rfind("line\t1\nline\t2\n", 0), 0u);
}
