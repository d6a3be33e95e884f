// The interpreter is Debian's liblua5.4, built as C: its errors are longjmps. So every call into
// Lua is protected (lua_pcall), and the C functions Lua calls back (the allocator, the hook,
// print and the wrapped base functions) hold no C++ object with a destructor while they may
// raise: a longjmp skips destructors, and a C++ exception must never cross a Lua frame.
#include "sandbox/lua_sandbox.h"

#include <lua.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace rlhf {
namespace {

using Clock = std::chrono::steady_clock;

// The state of one run, reachable from Lua through the allocator's user data.
struct Sandbox {
  SandboxLimits limits;
  lua_State* L = nullptr;
  const std::string* code = nullptr;
  size_t used = 0;                // bytes the interpreter holds now
  bool memory_refused = false;    // the allocator said no at least once
  bool syntax_error = false;
  int64_t executed = 0;           // instructions, counted at each hook call
  int step = 100;                 // instructions between hook calls (about 6% slower than 1000)
  enum class Stop { none, instructions, time } stop = Stop::none;
  Clock::time_point deadline;
  std::string output;             // capacity reserved up front: print never reallocates
};

Sandbox& sandbox_of(lua_State* L) {
  void* ud = nullptr;
  lua_getallocf(L, &ud);
  return *static_cast<Sandbox*>(ud);
}

void count_hook(lua_State* L, lua_Debug*);

// Refuses growth past the cap; Lua turns the refusal into a memory error ("not enough
// memory") after one emergency collection.
void* limited_alloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  auto& s = *static_cast<Sandbox*>(ud);
  const size_t old = ptr ? osize : 0;  // without a block, osize is the kind of object
  if (nsize == 0) {
    std::free(ptr);
    s.used -= old;
    return nullptr;
  }
  if (nsize > old && nsize - old > s.limits.max_memory - std::min(s.used, s.limits.max_memory)) {
    s.memory_refused = true;
    return nullptr;
  }
  // A large block belongs to an instruction that may be slow by itself (string ops on long
  // strings), so the clock is checked here too, not only every `step` instructions. The
  // refusal unwinds the instruction; the hook, now on every instruction, does the rest.
  if (nsize >= old + (64 << 10) && s.L && (s.stop != Sandbox::Stop::none || Clock::now() > s.deadline)) {
    if (s.stop == Sandbox::Stop::none) {
      s.stop = Sandbox::Stop::time;
      lua_sethook(s.L, count_hook, LUA_MASKCOUNT, 1);  // safe anywhere, even in a signal handler
    }
    return nullptr;
  }
  void* p = std::realloc(ptr, nsize);
  if (!p) {
    s.memory_refused = true;
    return nullptr;
  }
  s.used = s.used - old + nsize;
  return p;
}

// Called every `step` instructions. Once a limit is reached, it is called before every
// instruction and raises each time, so a pcall in the program cannot swallow the stop: the
// instruction after the pcall raises again, up to the outermost call.
void count_hook(lua_State* L, lua_Debug*) {
  auto& s = sandbox_of(L);
  if (s.stop == Sandbox::Stop::none) {
    s.executed += s.step;
    if (s.executed >= s.limits.max_instructions)
      s.stop = Sandbox::Stop::instructions;
    else if (Clock::now() > s.deadline)
      s.stop = Sandbox::Stop::time;
    else
      return;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  }
  luaL_error(L, s.stop == Sandbox::Stop::instructions ? "instruction limit exceeded" : "time limit exceeded");
}

void append_output(Sandbox& s, const char* p, size_t n) {
  const size_t room = s.limits.max_output - s.output.size();
  s.output.append(p, std::min(n, room));
}

int sandbox_print(lua_State* L) {
  auto& s = sandbox_of(L);
  const int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) {
    size_t len = 0;
    const char* str = luaL_tolstring(L, i, &len);  // may call __tostring (limits apply)
    if (i > 1) append_output(s, "\t", 1);
    append_output(s, str, len);
    lua_pop(L, 1);
  }
  append_output(s, "\n", 1);
  return 0;
}

// load(chunk [, chunkname [, mode [, env]]]) with the mode forced to "t": bytecode can break
// the VM's invariants, so only source text is loaded.
int text_only_load(lua_State* L) {
  const int n = std::max(lua_gettop(L), 3);  // keeps "env absent" apart from "env = nil"
  lua_settop(L, n);
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

// collectgarbage with the options that only look or collect; the others ("stop",
// "generational", "incremental", "setpause", ...) change the collector the limits rely on.
int safe_collectgarbage(lua_State* L) {
  const char* opt = luaL_optstring(L, 1, "collect");
  static const char* const allowed[] = {"collect", "count", "step", "isrunning"};
  if (std::none_of(std::begin(allowed), std::end(allowed), [&](const char* a) { return std::strcmp(a, opt) == 0; }))
    return luaL_error(L, "collectgarbage(\"%s\") is not allowed in the sandbox", opt);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

// setmetatable refusing __gc: Lua runs finalizers with hooks off, so a finalizer that loops
// would escape every limit. (A __gc added to the metatable later does not mark the object.)
int safe_setmetatable(lua_State* L) {
  lua_pushliteral(L, "__gc");
  if (lua_type(L, 2) == LUA_TTABLE && lua_rawget(L, 2) != LUA_TNIL)
    return luaL_error(L, "__gc metamethods are not allowed in the sandbox");
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

void wrap_global(lua_State* L, const char* name, lua_CFunction wrapper) {
  lua_getglobal(L, name);
  lua_pushcclosure(L, wrapper, 1);
  lua_setglobal(L, name);
}

// Runs inside lua_pcall: opens the safe libraries, loads the program and calls it with the
// hook set. Returns the program's first result.
int setup_and_run(lua_State* L) {
  auto& s = sandbox_of(L);
  static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},     {LUA_STRLIBNAME, luaopen_string},
                                  {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
                                  {LUA_UTF8LIBNAME, luaopen_utf8}};
  for (const auto& lib : libs) {
    luaL_requiref(L, lib.name, lib.func, 1);
    lua_pop(L, 1);
  }
  for (const char* name : {"dofile", "loadfile", "warn"}) {
    lua_pushnil(L);
    lua_setglobal(L, name);
  }
  lua_pushcfunction(L, sandbox_print);
  lua_setglobal(L, "print");
  wrap_global(L, "load", text_only_load);
  wrap_global(L, "collectgarbage", safe_collectgarbage);
  wrap_global(L, "setmetatable", safe_setmetatable);

  if (luaL_loadbufferx(L, s.code->data(), s.code->size(), "=program", "t") != LUA_OK) {
    s.syntax_error = true;
    return lua_error(L);
  }
  lua_sethook(L, count_hook, LUA_MASKCOUNT, s.step);
  lua_call(L, 0, 1);
  return 1;
}

std::string format_number(lua_State* L, int idx) {
  char buf[64];
  if (lua_isinteger(L, idx)) {
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(lua_tointeger(L, idx)));
  } else {
    const double x = lua_tonumber(L, idx);
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.2e18)
      std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(x));
    else
      std::snprintf(buf, sizeof buf, "%.15g", x);
  }
  return buf;
}

// The error object as text, without calling into Lua (lua_tolstring on a number allocates,
// and an allocation failure outside a protected call would abort).
std::string error_text(lua_State* L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_tostring(L, idx);
    case LUA_TNUMBER: return format_number(L, idx);
    default: return std::string("(error object is a ") + luaL_typename(L, idx) + " value)";
  }
}

std::string format_seconds(double s) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

}  // namespace

SandboxResult run_lua(const std::string& code, const SandboxLimits& limits) {
  Sandbox s;
  s.limits = limits;
  s.code = &code;
  s.step = static_cast<int>(std::clamp<int64_t>(limits.max_instructions, 1, 100));
  const double seconds = std::clamp(limits.max_seconds, 0.0, 1e9);  // a huge limit must not overflow the clock
  s.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  s.output.reserve(limits.max_output);
  const std::string memory_error = "memory limit exceeded (" + std::to_string(limits.max_memory) + " bytes)";

  SandboxResult r;
  std::unique_ptr<lua_State, void (*)(lua_State*)> state(lua_newstate(limited_alloc, &s), lua_close);
  lua_State* L = state.get();
  if (!L) {
    r.error = memory_error;
    return r;
  }
  s.L = L;
  lua_pushcfunction(L, setup_and_run);
  const int status = lua_pcall(L, 0, 1, 0);
  if (status == LUA_OK) {
    switch (lua_type(L, -1)) {
      case LUA_TNIL: r.ok = true; break;
      case LUA_TNUMBER: r.ok = true; r.value = format_number(L, -1); break;
      case LUA_TSTRING: r.ok = true; r.value = lua_tostring(L, -1); break;
      case LUA_TBOOLEAN: r.ok = true; r.value = lua_toboolean(L, -1) ? "true" : "false"; break;
      default:
        r.error = std::string("runtime error: the program returned a ") + luaL_typename(L, -1) +
                  " (expected a number, string, boolean or nil)";
    }
  } else {
    const std::string message = error_text(L, -1);
    if (s.stop == Sandbox::Stop::instructions)
      r.error = "instruction limit exceeded (" + std::to_string(limits.max_instructions) + ")";
    else if (s.stop == Sandbox::Stop::time)
      r.error = "time limit exceeded (" + format_seconds(limits.max_seconds) + " s)";
    else if (status == LUA_ERRMEM || (s.memory_refused && message.find("not enough memory") != std::string::npos))
      r.error = memory_error;
    else
      r.error = (s.syntax_error ? "syntax error: " : "runtime error: ") + message;
  }
  r.output = std::move(s.output);
  return r;
}

SandboxResult calculate(const std::string& expression, const SandboxLimits& limits) {
  return run_lua("return " + expression, limits);
}

}  // namespace rlhf
