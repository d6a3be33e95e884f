// rlhf redteam eval: a policy's answers to red-team prompts (AdvBench, XSTest, JSONL files,
// optionally prompts a model writes), judged by refusal rules and optionally a feedback model;
// harmful-compliance and over-refusal rates with 95% intervals, per set and category.
#include <iostream>
#include <memory>

#include "apps/llm.h"
#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "feedback/ai_feedback.h"
#include "feedback/redteam.h"

namespace rlhf::cli {
namespace {

struct RedTeamArgs {
  std::string model, judge, generator, seed_prompts, template_path, judge_template_path, out, run_dir;
  std::string as = "evaluation", device = "cpu", judge_method = "auto";
  std::vector<std::string> prompts = {"advbench", "xstest"};
  size_t limit = 0, generate = 0;
  bool judge_cot = false;
  RedTeamOptions opt;
};

// A template file's text, which must hold each of `fields` ("{prompt}", ...).
std::string read_template(const std::string& path, const std::vector<std::string>& fields) {
  const std::string t = read_file(path);
  for (const auto& f : fields) check(t.find(f) != std::string::npos, path + ": the template lacks " + f);
  return t;
}

void run_eval(const RedTeamArgs& a) {
  // 1. the prompts: each set (sampled down to --limit), then any the generator writes
  std::vector<RedTeamPrompt> prompts, unsafe_seeds;
  for (const auto& spec : a.prompts) {
    const auto set = read_prompt_set(prompt_set_path(spec));
    for (const auto& p : set)
      if (p.label == "unsafe") unsafe_seeds.push_back(p);
    for (auto& p : sample_prompts(set, a.limit, a.opt.seed)) prompts.push_back(std::move(p));
  }
  if (a.generate > 0) {
    check(!a.generator.empty(), "redteam eval: --generate needs --generator MODEL_OR_URL");
    if (!a.seed_prompts.empty()) unsafe_seeds = read_prompt_set(prompt_set_path(a.seed_prompts));
    std::vector<std::string> seeds;
    for (const auto& p : unsafe_seeds) seeds.push_back(p.prompt);
    auto generator = open_llm(a.generator, LoadOptions{.device = a.device});
    const auto generated = generate_redteam_prompts(*generator, seeds, a.generate, a.opt.seed);
    if (generated.size() < a.generate)
      std::cerr << "redteam: the generator wrote " << generated.size() << " new prompts of the " << a.generate
                << " asked for (the rest were empty or duplicates)\n";
    prompts.insert(prompts.end(), generated.begin(), generated.end());
  }
  check(!prompts.empty(), "redteam eval: no prompts (give --prompts, or --generate with --generator)");

  // 2. the policy and the judge (one model when both name the same one)
  RedTeamOptions opt = a.opt;
  if (!a.template_path.empty()) opt.prompt_template = read_template(a.template_path, {"{prompt}"});
  if (!a.judge_template_path.empty())
    opt.judge_template = read_template(a.judge_template_path, {"{response}", "{a}", "{b}"});
  opt.chain_of_thought = a.judge_cot;
  std::shared_ptr<Llm> policy = open_llm(a.model, LoadOptions{.device = a.device});
  std::unique_ptr<FeedbackModel> judge;
  if (!a.judge.empty()) {
    std::shared_ptr<Llm> judge_llm = a.judge == a.model ? policy : open_llm(a.judge, LoadOptions{.device = a.device});
    judge = std::make_unique<FeedbackModel>(
        judge_llm, FeedbackOptions{.method = a.judge_method, .chain_of_thought = a.judge_cot, .seed = a.opt.seed});
  }

  // 3. answers, verdicts, rates
  const auto result = redteam_eval(*policy, judge.get(), prompts, opt);
  if (!a.out.empty()) {
    nlohmann::json file = {{"policy", policy->describe()},
                           {"judge", judge ? nlohmann::json(judge->describe()) : nlohmann::json(nullptr)},
                           {"options",
                            {{"prompts", a.prompts},
                             {"limit", a.limit},
                             {"generate", a.generate},
                             {"prompt_template", opt.chat_template.empty() ? opt.prompt_template : ""},
                             {"chat_template", opt.chat_template},
                             {"stop", opt.stop},
                             {"max_tokens", opt.max_tokens},
                             {"temperature", opt.temperature},
                             {"seed", opt.seed},
                             {"judge_template", judge ? (opt.judge_template.empty() ? kRefusalQuestion : opt.judge_template) : ""},
                             {"judge_method", judge ? a.judge_method : ""},
                             {"judge_cot", a.judge_cot}}},
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
  cmd->add_option("--judge", a->judge, "Feedback model that judges refusals (local model or endpoint; default: rules only)");
  cmd->add_option("--prompts", a->prompts,
                  "Prompt set: advbench, xstest (files in $RLHF_DATA), or a .csv / .jsonl path (repeatable)")
      ->capture_default_str()->allow_extra_args(false);
  cmd->add_option("--limit", a->limit, "Prompts per set at most, sampled by --seed across labels and categories; 0 = all")
      ->capture_default_str();
  cmd->add_option("--generate", a->generate, "Red-team prompts to have --generator write from seed examples")
      ->capture_default_str();
  cmd->add_option("--generator", a->generator, "Model that writes red-team prompts (local model or endpoint)");
  cmd->add_option("--seed-prompts", a->seed_prompts,
                  "Prompt file whose prompts seed the generator (default: the unsafe prompts of --prompts)");
  cmd->add_option("--template", a->template_path, "Policy prompt template file with {prompt} (default: \"Human: {prompt}\\n\\nAssistant:\")");
  cmd->add_option("--chat-template", a->opt.chat_template, "Send each prompt as a user message with this chat template (llama2, llama3, chatml, hh)");
  cmd->add_option("--max-tokens", a->opt.max_tokens, "Tokens per answer at most")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--temperature,-t", a->opt.temperature, "Sampling temperature of the policy; 0 = greedy")->capture_default_str();
  cmd->add_option("--seed", a->opt.seed, "Seed of the sampling, the --limit draw and generation")->capture_default_str();
  cmd->add_option("--judge-template", a->judge_template_path,
                  "Judge question file with {prompt} {response} {a} {b} (default: feedback/redteam.h's kRefusalQuestion)");
  cmd->add_option("--judge-method", a->judge_method, "auto (option log-probabilities, else votes), logprobs or votes")
      ->capture_default_str()->check(CLI::IsMember({"auto", "logprobs", "votes"}));
  cmd->add_flag("--judge-cot", a->judge_cot, "The judge reasons before answering (probabilities clamped to 40-60%)");
  cmd->add_option("--out,-o", a->out, "JSON file with every prompt, response and verdict, and the summary");
  cmd->add_option("--run-dir", a->run_dir, "Run directory: the summary goes into RUN_DIR/redteam.json for `rlhf report`");
  cmd->add_option("--as", a->as, "Key of this evaluation in redteam.json")
      ->capture_default_str()->check(CLI::IsMember({"before", "after", "evaluation"}));
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N (local models)")->capture_default_str();
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace rlhf::cli
