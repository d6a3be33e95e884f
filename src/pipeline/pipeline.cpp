#include "pipeline/pipeline.h"

#include <cmath>
#include <iostream>
#include <numeric>
#include <random>

#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "data/datasets.h"
#include "feedback/ai_feedback.h"
#include "feedback/label_server.h"
#include "feedback/redteam.h"
#include "feedback/labeler.h"
#include "generate/generator.h"
#include "model/model.h"
#include "report/report.h"
#include "train/config_fields.h"
#include "trainers/ppo_trainer.h"
#include "model/reward_model.h"
#include "trainers/reward_trainer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

namespace {

struct Split {
  std::vector<std::string> train, eval;
};

// Held-out prompts first (a seeded shuffle), the rest for labeling and PPO.
Split split_prompts(const PipelineConfig& cfg) {
  // JSONL prompts, or a red-team set (advbench, xstest, a .csv) for RL-CAI: its prompts, whatever their label.
  std::vector<std::string> all;
  const std::string ext = fs::path(cfg.prompts).extension().string();
  if (cfg.prompts == "advbench" || cfg.prompts == "xstest" || ext == ".csv")
    for (const auto& p : read_prompt_set(prompt_set_path(cfg.prompts))) all.push_back(p.prompt);
  else
    all = read_prompts(cfg.prompts);
  std::mt19937_64 rng(static_cast<uint64_t>(cfg.seed) + 101);
  for (size_t i = all.size(); i > 1; --i) std::swap(all[i - 1], all[rng() % i]);
  const size_t n_eval = std::min<size_t>(cfg.eval_prompts, all.size() / 2);
  Split s;
  s.eval.assign(all.begin(), all.begin() + n_eval);
  s.train.assign(all.begin() + n_eval, all.end());
  check(!s.train.empty(), cfg.prompts + ": too few prompts for a held-out split");
  return s;
}

// `n` samples of `policy` per prompt, in prompt order: the repeated prompts, their token
// ids and the generations.
struct Sampled {
  std::vector<std::string> prompts;
  std::vector<std::vector<int32_t>> ids;
  std::vector<Generation> gens;
};

Sampled sample_each(LoadedModel& policy, const std::vector<std::string>& prompts, int64_t n, const PipelineConfig& cfg,
                    uint64_t seed) {
  Sampled out;
  const Tokenizer& tok = *policy.tokenizer;
  for (const auto& p : prompts)
    for (int64_t j = 0; j < n; ++j) {
      out.prompts.push_back(p);
      out.ids.push_back(encode_prompt(tok, p));
    }
  GenerateOptions g;
  g.max_new_tokens = cfg.ppo.max_new_tokens;
  g.sampling.temperature = static_cast<float>(cfg.ppo.temperature);
  g.seed = seed;
  out.gens = generate(policy.model, tok, out.ids, g);
  return out;
}

std::shared_ptr<FeedbackModel> open_feedback(const PipelineConfig& cfg) {
  FeedbackOptions o;
  o.method = cfg.feedback_method;
  o.votes = static_cast<int>(cfg.feedback_votes);
  o.chain_of_thought = cfg.feedback_cot;
  o.seed = static_cast<uint64_t>(cfg.seed);
  return std::make_shared<FeedbackModel>(open_llm(cfg.feedback_model, LoadOptions{cfg.device, cfg.dtype, {}}), o);
}

double mean(const std::vector<double>& v) { return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size(); }

// Samples of one policy on the held-out prompts: texts, and the per-sample KL to the
// reference, sum over tokens of (log pi - log pi_ref) (k1 on the policy's own samples).
struct EvalSamples {
  std::vector<std::string> prompts, texts;
  std::vector<double> kl;
  double mean_length = 0;
};

EvalSamples sample_for_eval(LoadedModel& policy, LoadedModel& ref, const std::vector<std::string>& prompts,
                            const PipelineConfig& cfg) {
  EvalSamples out;
  auto [ps, ids, gens] = sample_each(policy, prompts, cfg.eval_samples, cfg, static_cast<uint64_t>(cfg.seed) + 424242);
  torch::NoGradGuard ng;
  double len = 0;
  for (size_t i = 0; i < gens.size(); ++i) {
    out.prompts.push_back(ps[i]);
    out.texts.push_back(gens[i].text);
    len += gens[i].tokens.size();
    double kl = 0;
    if (!gens[i].tokens.empty()) {
      std::vector<int64_t> seq(ids[i].begin(), ids[i].end());
      seq.insert(seq.end(), gens[i].tokens.begin(), gens[i].tokens.end());
      auto logits = ref.model->forward(torch::tensor(seq).unsqueeze(0).to(ref.model->device()))[0] / cfg.ppo.temperature;
      auto logp = torch::log_softmax(logits, -1).to(torch::kCPU);
      for (size_t t = 0; t < gens[i].tokens.size(); ++t)
        kl += gens[i].logprobs[t] - logp[ids[i].size() - 1 + t][gens[i].tokens[t]].item<double>();
    }
    out.kl.push_back(kl);
  }
  out.mean_length = len / std::max<size_t>(1, gens.size());
  return out;
}

// 95% percentile bootstrap interval of mean(after - before) over paired samples.
std::pair<double, double> bootstrap_diff(const std::vector<double>& before, const std::vector<double>& after, uint64_t seed) {
  const size_t n = before.size();
  std::mt19937_64 rng(seed);
  std::vector<double> stats;
  for (int b = 0; b < 2000; ++b) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) {
      const size_t j = rng() % n;
      s += after[j] - before[j];
    }
    stats.push_back(s / n);
  }
  std::sort(stats.begin(), stats.end());
  return {stats[49], stats[1949]};
}

}  // namespace

json run_pipeline(const PipelineConfig& cfg, bool force) {
  check(!cfg.policy.empty(), "pipeline: `policy` is required");
  check(!cfg.prompts.empty(), "pipeline: `prompts` is required");
  check(cfg.labeler == "simulated" || cfg.labeler == "web" || cfg.labeler == "ai" || cfg.labeler == "mix",
        "pipeline: labeler '" + cfg.labeler + "' is not one of: simulated, web, ai, mix");
  check(cfg.labeler == "simulated" || cfg.labeler == "web" || !cfg.feedback_model.empty(),
        "pipeline: labeler '" + cfg.labeler + "' needs `feedback_model` (a model path or an endpoint URL)");
  const fs::path run = cfg.run_dir;
  fs::create_directories(run);
  PipelineConfig saved = cfg;
  write_file_atomic(run / "config.toml", to_toml(saved));
  // Every stage's settings are checked before the first stage runs.
  check_range(cfg.k >= 2, "k", cfg.k, ">= 2 (completions to rank)");
  check_range(cfg.label_prompts > 0, "label_prompts", cfg.label_prompts, "> 0");
  check_range(cfg.labeler_temperature >= 0, "labeler_temperature", cfg.labeler_temperature, ">= 0");
  check_range(cfg.labelers_per_prompt > 0, "labelers_per_prompt", cfg.labelers_per_prompt, "> 0");
  check_range(cfg.eval_prompts > 0, "eval_prompts", cfg.eval_prompts, "> 0");
  check_range(cfg.ai_share >= 0 && cfg.ai_share <= 1, "ai_share", cfg.ai_share, "in [0, 1]");
  check_range(cfg.feedback_votes > 0, "feedback_votes", cfg.feedback_votes, "> 0");
  check_range(cfg.eval_samples > 0, "eval_samples", cfg.eval_samples, "> 0");
  validate(cfg.rm);
  validate(cfg.ppo);
  // PPO's reward: `model` is the reward model trained below; the pipeline's prompts carry no
  // gold answers or tests for the verifiers that read them.
  for (const auto& t : parse_reward_terms(cfg.ppo.reward.terms))
    check(t.name != "exact_answer" && t.name != "lua_tests",
          "pipeline: [ppo] reward: the term '" + t.name + "' needs gold fields the pipeline's prompts do not carry");
  check_reward_spec(cfg.ppo.reward, "", {.reward_model = (run / "rm" / "model").string()});
  check(cfg.feedback_method == "auto" || cfg.feedback_method == "logprobs" || cfg.feedback_method == "votes",
        "pipeline: feedback_method must be auto, logprobs or votes, got '" + cfg.feedback_method + "'");
  const auto split = split_prompts(cfg);
  const LoadOptions lo{cfg.device, cfg.dtype};
  // The red-team prompts and templates are read now, so a bad path fails before the first
  // stage, not after PPO. (Prompts a generator writes are written now too.)
  RedTeamConfig redteam_cfg = cfg.redteam;
  redteam_cfg.seed = cfg.seed;
  std::vector<RedTeamPrompt> redteam_prompts;
  RedTeamOptions redteam_opts;
  if (cfg.redteam_eval) {
    redteam_prompts = load_redteam_prompts(redteam_cfg, lo);
    redteam_opts = redteam_options(redteam_cfg);
  }
  auto stage = [&](const char* name, const fs::path& output) {
    const bool skip = !force && fs::exists(output);
    std::cerr << (skip ? "[skip] " : "[run]  ") << name << " -> " << output.string() << "\n";
    return !skip;
  };

  // 1. Sample K completions per labeling prompt from the starting policy, 2. have them ranked.
  const fs::path rankings_path = run / "rankings.jsonl";
  if (stage("sample + label", rankings_path)) {
    std::vector<std::string> ps(split.train.begin(),
                                split.train.begin() + std::min<size_t>(cfg.label_prompts, split.train.size()));
    // labeler = mix: the first (1 - ai_share) of the prompts go to people, the rest to the AI.
    size_t n_people = cfg.labeler == "web" ? ps.size() : 0;
    if (cfg.labeler == "mix") n_people = ps.size() - static_cast<size_t>(std::llround(cfg.ai_share * ps.size()));
    const std::vector<std::string> to_people(ps.begin(), ps.begin() + n_people), to_machine(ps.begin() + n_people, ps.end());
    std::vector<Ranking> rankings;
    if (!to_machine.empty()) {
      auto policy = load_model(cfg.policy, lo);
      check(policy.tokenizer != nullptr, cfg.policy + ": no tokenizer found with the model");
      const auto gens = sample_each(policy, to_machine, cfg.k, cfg, static_cast<uint64_t>(cfg.seed)).gens;
      std::vector<LabelRequest> requests;
      for (size_t i = 0; i < to_machine.size(); ++i) {
        LabelRequest r{to_machine[i], {}};
        for (int64_t j = 0; j < cfg.k; ++j) r.completions.push_back(gens[i * cfg.k + j].text);
        requests.push_back(r);
      }
      if (cfg.labeler == "simulated") {
        SimulatedLabeler labeler(SentimentLexicon::builtin(), cfg.labeler_temperature, static_cast<uint64_t>(cfg.seed));
        rankings = labeler.rank(requests);
      } else {
        AiLabeler labeler(open_feedback(cfg), constitution_or_default(cfg.constitution), static_cast<uint64_t>(cfg.seed));
        rankings = labeler.rank(requests);
        std::cout << rankings.size() << " prompts ranked by the AI labeler (" << cfg.feedback_model << ")" << std::endl;
      }
      if (!to_people.empty()) write_rankings(run / "ai_rankings.jsonl", rankings);  // kept while people label
    }
    if (!to_people.empty()) {
      // People rank theirs on the labeling page; the store keeps their work across restarts.
      LabelStore store(run / "labels.sqlite");
      LabelServeOptions o;
      o.db = (run / "labels.sqlite").string();
      o.host = cfg.web_host;
      o.port = cfg.web_port;  // checked by prepare_label_store: no narrowing to int first
      o.k = cfg.k;
      o.labelers_per_prompt = cfg.labelers_per_prompt;
      o.token = cfg.web_token;
      std::vector<LabelPrompt> prompts;
      for (const auto& p : to_people) prompts.push_back({p, {}});
      prepare_label_store(store, o, prompts);
      const int64_t needed =
          cfg.web_rankings > 0 ? cfg.web_rankings : static_cast<int64_t>(to_people.size()) * cfg.labelers_per_prompt;
      std::cout << "waiting for " << needed << " rankings on the labeling page (" << store.submission_count() << " so far)"
                << std::endl;
      auto completer = [&]() -> CompleteFn {
        auto policy = std::make_shared<LoadedModel>(load_model(cfg.policy, lo));
        return policy_completer(policy, cfg.k, cfg.ppo.max_new_tokens, cfg.ppo.temperature, static_cast<uint64_t>(cfg.seed));
      };
      serve_labels(store, o, completer, [&] { return store.submission_count() >= needed; });
      auto people = store.export_rankings();
      std::cout << people.size() << " rankings from the labeling page" << std::endl;
      rankings.insert(rankings.begin(), people.begin(), people.end());
    }
    write_rankings(rankings_path, rankings);
  }

  // 3. Reward model on the K-choose-2 pairs of the rankings.
  const fs::path rm_dir = run / "rm";
  if (stage("reward model", rm_dir / "model" / "config.json")) {
    RewardConfig rc = cfg.rm;
    rc.train.model = cfg.policy;
    rc.train.train_data = rankings_path.string();
    rc.data_format = "rankings";
    rc.train.run_dir = rm_dir.string();
    rc.train.seed = cfg.seed;
    rc.train.device = cfg.device;
    rc.train.dtype = cfg.dtype;
    // Normalised on samples drawn as PPO will draw them.
    rc.norm_temperature = cfg.ppo.temperature;
    rc.norm_max_new_tokens = cfg.ppo.max_new_tokens;
    auto m = train_reward_model(rc, false);
    write_file_atomic(rm_dir / "result.json", json(m).dump(1));
  }
  const json rm_result = json::parse(read_file(rm_dir / "result.json"));

  // 4. PPO against the reward model, KL-penalized towards the starting policy.
  const fs::path ppo_dir = run / "ppo";
  if (stage("ppo", ppo_dir / "model" / "config.json")) {
    std::string prompts;
    for (const auto& p : split.train) prompts += dump_json({{"prompt", p}}) + "\n";
    write_file_atomic(run / "ppo_prompts.jsonl", prompts);
    PpoConfig pc = cfg.ppo;
    pc.train.model = cfg.policy;
    pc.train.train_data = (run / "ppo_prompts.jsonl").string();
    pc.train.run_dir = ppo_dir.string();
    pc.train.seed = cfg.seed;
    pc.train.device = cfg.device;
    pc.train.dtype = cfg.dtype;
    pc.reward_model = (rm_dir / "model").string();
    // The gold score of each rollout beside the reward model's, to see them part ways.
    const auto lex = SentimentLexicon::builtin();
    train_ppo(pc, false, {}, 0, [lex](const std::vector<std::string>&, const std::vector<std::string>& responses) {
      std::vector<double> g;
      for (const auto& r : responses) g.push_back(lex.score(r));
      return Metrics{{"objective/gold", mean(g)}};
    });
  }

  // 5. Evaluation on held-out prompts: before (the starting policy) and after.
  std::cerr << "[run]  evaluation -> " << (run / "summary.json").string() << "\n";
  auto start = load_model(cfg.policy, lo), trained = load_model(ppo_dir / "model", lo), ref = load_model(cfg.policy, lo);
  auto rm = load_reward_model((rm_dir / "model").string(), lo);
  const auto lex = SentimentLexicon::builtin();
  auto before = sample_for_eval(start, ref, split.eval, cfg), after = sample_for_eval(trained, ref, split.eval, cfg);
  auto gold = [&](const EvalSamples& e) {
    std::vector<double> g;
    for (const auto& t : e.texts) g.push_back(lex.score(t));
    return g;
  };
  auto rm_scores = [&](const EvalSamples& e) {
    std::vector<std::pair<std::string, std::string>> texts;
    for (size_t i = 0; i < e.texts.size(); ++i) texts.emplace_back(e.prompts[i], e.texts[i]);
    return score_texts(rm, texts, cfg.rm.train.max_length);
  };
  const auto gold_b = gold(before), gold_a = gold(after), rm_b = rm_scores(before), rm_a = rm_scores(after);
  const auto ci = bootstrap_diff(gold_b, gold_a, static_cast<uint64_t>(cfg.seed) + 99);
  json samples = json::array();  // the first sample of up to 8 held-out prompts
  for (size_t i = 0; i < before.texts.size() && samples.size() < 8; i += std::max<int64_t>(1, cfg.eval_samples))
    samples.push_back({{"prompt", before.prompts[i]}, {"before", before.texts[i]}, {"after", after.texts[i]}});
  json summary = {{"gold_before", mean(gold_b)},
                  {"gold_after", mean(gold_a)},
                  {"gold_diff", mean(gold_a) - mean(gold_b)},
                  {"gold_diff_ci95", {ci.first, ci.second}},
                  {"rm_score_before", mean(rm_b)},
                  {"rm_score_after", mean(rm_a)},
                  {"rm_accuracy", rm_result.value("eval/accuracy", std::nan(""))},
                  {"kl", mean(after.kl)},
                  {"distinct_2_before", distinct_n(before.texts, 2)},
                  {"distinct_2_after", distinct_n(after.texts, 2)},
                  {"length_before", before.mean_length},
                  {"length_after", after.mean_length},
                  {"eval_samples", before.texts.size()},
                  {"samples", samples}};
  // 6. Red-team evaluation, before and after: harmful compliance and over-refusal.
  if (cfg.redteam_eval) {
    std::cerr << "[run]  red-team evaluation -> " << (run / "redteam.json").string() << "\n";
    auto judge = open_redteam_judge(redteam_cfg, lo);
    for (const auto& [key, path] : {std::pair<std::string, std::string>{"before", cfg.policy},
                                    std::pair<std::string, std::string>{"after", (ppo_dir / "model").string()}}) {
      LocalLlm policy(path, lo);
      const json result = redteam_eval(policy, judge.get(), redteam_prompts, redteam_opts);
      save_redteam_run(run, key, result);
      summary["redteam"][key] = result["summary"];
    }
  }
  write_file_atomic(run / "summary.json", dump_json(summary, 2) + "\n");  // samples: model text, maybe not UTF-8
  const fs::path report = write_report(run);

  // The table on the terminal.
  std::printf("\n%-22s %12s %12s\n", "held-out prompts", "before", "after");
  std::printf("%-22s %12.3f %12.3f\n", "gold score", mean(gold_b), mean(gold_a));
  std::printf("%-22s %12.3f %12.3f\n", "reward-model score", mean(rm_b), mean(rm_a));
  std::printf("%-22s %12s %12.3f\n", "KL to reference", "0", mean(after.kl));
  std::printf("%-22s %12.3f %12.3f\n", "distinct-2", distinct_n(before.texts, 2), distinct_n(after.texts, 2));
  std::printf("%-22s %12.1f %12.1f\n", "mean length (tokens)", before.mean_length, after.mean_length);
  std::printf("gold difference %.3f, 95%% bootstrap interval [%.3f, %.3f]; reward-model held-out accuracy %.3f\n",
              mean(gold_a) - mean(gold_b), ci.first, ci.second, summary["rm_accuracy"].get<double>());
  for (size_t i = 0; i < std::min<size_t>(3, samples.size()); ++i)
    std::printf("\n> %s\n  before: %s\n  after:  %s\n", samples[i]["prompt"].get<std::string>().c_str(),
                samples[i]["before"].get<std::string>().c_str(), samples[i]["after"].get<std::string>().c_str());
  if (summary.contains("redteam"))
    for (const char* key : {"before", "after"})
      std::printf("\nred-team evaluation, %s:\n%s", key, redteam_markdown(summary["redteam"][key]).c_str());
  std::printf("\nreport: %s\n", report.string().c_str());
  return summary;
}

}  // namespace rlhf
