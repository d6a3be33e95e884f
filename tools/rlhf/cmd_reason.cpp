// rlhf cot | pal | sandbox run: chain-of-thought with self-consistency, program-aided answers,
// and the Lua sandbox on its own. cot and pal answer one question (printed for people) or a
// JSONL file of them (--questions/--out: one batched generation for the whole file).
#include <iostream>
#include <memory>

#include "apps/app_io.h"
#include "apps/cot.h"
#include "apps/llm.h"
#include "apps/pal.h"
#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "sandbox/lua_sandbox.h"

namespace rlhf::cli {
namespace {

// "\n", "\t" and "\\" in a --stop value as the characters (a shell argument cannot easily hold
// a newline), as llama.cpp does.
std::vector<std::string> unescape(std::vector<std::string> values) {
  for (auto& v : values) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) {
      if (v[i] == '\\' && i + 1 < v.size() && (v[i + 1] == 'n' || v[i + 1] == 't' || v[i + 1] == '\\')) {
        ++i;
        out += v[i] == 'n' ? '\n' : v[i] == 't' ? '\t' : '\\';
      } else {
        out += v[i];
      }
    }
    v = out;
  }
  return values;
}

// The flags cot and pal share: the model, the template, the question or the batch files.
struct AppArgs {
  std::string model, template_path, question, questions, out, device = "cpu";
  int64_t max_tokens = 256;
  uint64_t seed = 0;
};

void add_app_options(CLI::App& cmd, AppArgs& a) {
  cmd.add_option("--model,-m", a.model, "Local model (HF folder, .gguf, llama2.c .bin) or http(s):// endpoint")
      ->required();
  cmd.add_option("--template", a.template_path, "Prompt template file with {question} (default: the built-in few-shot one)");
  cmd.add_option("--max-tokens", a.max_tokens, "Tokens to generate per answer at most")->capture_default_str();
  cmd.add_option("--seed", a.seed, "Sampling seed")->capture_default_str();
  cmd.add_option("--device", a.device, "cpu, cuda or cuda:N (local models)")->capture_default_str();
  cmd.add_option("--questions", a.questions, "Batch mode: JSONL with a 'question' per line (other fields are copied)");
  cmd.add_option("--out", a.out, "Batch mode: the answers, one JSON object per question");
  cmd.add_option("question", a.question, "The question (without --questions)");
}

void add_limit_options(CLI::App& cmd, SandboxLimits& limits, std::shared_ptr<size_t> memory_mb) {
  cmd.add_option("--max-instructions", limits.max_instructions, "Lua instructions a program may run")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd.add_option("--max-memory-mb", *memory_mb, "MiB a program may hold")->capture_default_str()->check(CLI::PositiveNumber);
  cmd.add_option("--max-seconds", limits.max_seconds, "Wall-clock seconds a program may run")
      ->capture_default_str()->check(CLI::PositiveNumber);
}

// The questions to answer: the positional one, or the --questions file's records.
std::vector<nlohmann::json> questions_of(const AppArgs& a, const std::string& cmd) {
  check(a.questions.empty() != a.question.empty(), cmd + ": give one QUESTION, or --questions FILE.jsonl with --out (not both)");
  check(a.questions.empty() == a.out.empty(), cmd + ": --questions and --out go together");
  if (a.questions.empty()) return {nlohmann::json{{"question", a.question}}};
  return read_questions(a.questions);
}

std::vector<std::string> texts_of(const std::vector<nlohmann::json>& records) {
  std::vector<std::string> q;
  for (const auto& r : records) q.push_back(r["question"].get<std::string>());
  return q;
}

// Batch mode's output: each input record with the technique's fields added.
template <class Result>
void write_results(const std::string& out, std::vector<nlohmann::json> records, const std::vector<Result>& results) {
  for (size_t i = 0; i < records.size(); ++i) records[i].update(to_json(results[i]));
  write_jsonl(out, records);
}

void add_cot(CLI::App& app) {
  struct Args : AppArgs {
    int n = 1;
    float temperature = 0;
    std::vector<std::string> stop = CotOptions{}.stop;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("cot", "Chain-of-thought answers, with self-consistency (majority of --n paths)");
  add_app_options(*cmd, *a);
  cmd->add_option("--n", a->n, "Reasoning paths per question; > 1 = self-consistency vote")
      ->capture_default_str()->check(CLI::PositiveNumber);
  auto* temp = cmd->add_option("--temperature,-t", a->temperature, "Sampling temperature (default: 0, or 0.7 when --n > 1)");
  cmd->add_option("--stop", a->stop, "Stop strings; \\n is a newline (repeatable; default: \"\\nQ:\", the next few-shot question)")
      ->allow_extra_args(false);  // one value per --stop, so a QUESTION may follow
  cmd->callback([a, temp] {
    auto records = questions_of(*a, "cot");
    CotOptions o;
    o.tmpl = load_template(a->template_path, kCotTemplate);
    o.n = a->n;
    if (temp->count()) o.temperature = a->temperature;
    o.max_tokens = a->max_tokens;
    o.stop = unescape(a->stop);
    o.seed = a->seed;
    auto llm = open_llm(a->model, LoadOptions{.device = a->device});
    auto results = run_cot(*llm, texts_of(records), o);
    if (!a->out.empty()) return write_results(a->out, records, results);
    const auto& r = results[0];
    std::cout << (r.paths.empty() ? "" : r.paths[0].text) << "\n";
    if (a->n > 1) {
      std::cout << "Votes:";
      for (const auto& [answer, count] : r.votes) std::cout << " " << answer << " (" << count << ")";
      std::cout << "\n";
    }
    std::cout << "Answer: " << r.answer << "\n";
  });
}

void add_pal(CLI::App& app) {
  struct Args : AppArgs {
    PalOptions o;
    std::shared_ptr<size_t> memory_mb = std::make_shared<size_t>(SandboxLimits{}.max_memory >> 20);
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("pal", "Program-aided answers: the model writes Lua, the sandbox computes the answer");
  add_app_options(*cmd, *a);
  cmd->add_option("--temperature,-t", a->o.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--stop", a->o.stop, "Stop strings; \\n is a newline (repeatable; default: \"\\n```\", the end of the program)")
      ->allow_extra_args(false);
  add_limit_options(*cmd, a->o.limits, a->memory_mb);
  cmd->callback([a] {
    auto records = questions_of(*a, "pal");
    PalOptions o = a->o;
    o.stop = unescape(o.stop);
    o.tmpl = load_template(a->template_path, kPalTemplate);
    o.max_tokens = a->max_tokens;
    o.seed = a->seed;
    o.limits.max_memory = *a->memory_mb << 20;
    auto llm = open_llm(a->model, LoadOptions{.device = a->device});
    auto results = run_pal(*llm, texts_of(records), o);
    if (!a->out.empty()) return write_results(a->out, records, results);
    const auto& r = results[0];
    std::cout << r.program << "\nStatus: " << r.status << "\n";
    if (!r.output.empty()) std::cout << "Output:\n" << r.output;
    std::cout << "Answer: " << r.answer << "\n";
  });
}

void add_sandbox(CLI::App& app) {
  struct Args {
    std::string file;
    SandboxLimits limits;
    std::shared_ptr<size_t> memory_mb = std::make_shared<size_t>(SandboxLimits{}.max_memory >> 20);
  };
  auto a = std::make_shared<Args>();
  auto* sandbox = app.add_subcommand("sandbox", "The Lua sandbox PAL and ReAct run programs in");
  sandbox->require_subcommand(1);
  auto* run = sandbox->add_subcommand("run", "Run a Lua file: prints what it printed, then its return value");
  run->add_option("file", a->file, "The Lua 5.4 program")->required();
  add_limit_options(*run, a->limits, a->memory_mb);
  run->callback([a] {
    SandboxLimits limits = a->limits;
    limits.max_memory = *a->memory_mb << 20;
    auto r = run_lua(read_file(a->file), limits);
    std::cout << r.output << std::flush;
    check(r.ok, a->file + ": " + r.error);
    if (!r.value.empty()) std::cout << r.value << "\n";
  });
}

}  // namespace

void add_reason_commands(CLI::App& app) {
  add_cot(app);
  add_pal(app);
  add_sandbox(app);
}

}  // namespace rlhf::cli
