// rlhf redteam eval: a policy's answers to red-team prompts (AdvBench, XSTest, JSONL files,
// optionally prompts a model writes), judged by refusal rules and optionally a feedback model;
// harmful-compliance and over-refusal rates with 95% intervals, per set and category.
#include <iostream>
#include <memory>

#include "apps/llm.h"
#include "commands.h"
#include "core/io.h"
#include "core/utf8.h"
#include "feedback/ai_feedback.h"
#include "feedback/redteam.h"
#include "train/config_fields.h"

namespace rlhf::cli {
namespace {

struct RedTeamArgs {
  RedTeamConfig cfg;
  std::string config_path, model, out, run_dir, as = "evaluation", device = "cpu";
};

void run_eval(RedTeamArgs& a) {
  const LoadOptions load{.device = a.device};
  const RedTeamOptions opt = redteam_options(a.cfg);  // template files first: a bad one fails before any model loads
  const auto prompts = load_redteam_prompts(a.cfg, load);
  std::shared_ptr<Llm> policy = open_llm(a.model, load);
  const auto judge = open_redteam_judge(a.cfg, load, a.model, policy);
  const auto result = redteam_eval(*policy, judge.get(), prompts, opt);
  if (!a.out.empty()) {
    nlohmann::json config;
    a.cfg.visit([&](const std::string& name, const auto& field, const char*) { config[name] = field; });
    nlohmann::json file = {{"policy", policy->describe()},
                           {"judge", judge ? nlohmann::json(judge->describe()) : nlohmann::json(nullptr)},
                           {"config", config},
                           {"records", result["records"]},
                           {"summary", result["summary"]}};
    write_file_atomic(a.out, dump_json(file, 2) + "\n");
  }
  if (!a.run_dir.empty()) save_redteam_run(a.run_dir, a.as, result);
  std::cout << redteam_markdown(result["summary"]);
}

}  // namespace

void add_redteam(CLI::App& app) {
  auto* redteam = app.add_subcommand("redteam", "Red teaming: harmful compliance and over-refusal of a policy");
  redteam->require_subcommand(1);
  auto a = std::make_shared<RedTeamArgs>();
  auto* cmd = redteam->add_subcommand(
      "eval", "Answer red-team prompts with --model; judge refusals by rules and optionally by --judge; print the rates");
  cmd->add_option("--model,-m", a->model, "Policy: local model (HF folder, .gguf, llama2.c .bin) or http(s):// endpoint")
      ->required();
  add_config_options(*cmd, a->cfg, a->config_path);
  cmd->add_option("--out,-o", a->out, "JSON file with every prompt, response and verdict, the config and the summary");
  cmd->add_option("--run-dir", a->run_dir, "Run directory: the summary goes into RUN_DIR/redteam.json for `rlhf report`");
  cmd->add_option("--as", a->as, "Key of this evaluation in redteam.json")
      ->capture_default_str()->check(CLI::IsMember({"before", "after", "evaluation"}));
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (local models)")->capture_default_str();
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace rlhf::cli
