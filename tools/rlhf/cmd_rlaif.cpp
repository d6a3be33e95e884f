// rlhf rlaif label | agreement: AI preference labels under a constitution (src/feedback/ai_feedback.h),
// and how often they agree with people's.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/app_io.h"
#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "data/datasets.h"
#include "feedback_args.h"
#include "generate/generator.h"

using json = nlohmann::json;

namespace rlhf::cli {

namespace {

// What `rlaif label` ranks: {"prompt", "completions": [...]} (a rankings file's lines; any
// "ranking" is ignored), or preference pairs (prompt/chosen/rejected or HH dialogues) as two
// completions each.
std::vector<LabelRequest> read_label_requests(const std::string& path) {
  auto text = read_maybe_gzip(path);
  const auto first = text.substr(0, text.find('\n'));
  std::vector<LabelRequest> out;
  if (first.find("\"completions\"") != std::string::npos) {
    // Rankings without a ranking are fine here: give each line one so the reader accepts it.
    size_t line_no = 0, begin = 0;
    while (begin < text.size()) {
      size_t end = text.find('\n', begin);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(begin, end - begin);
      begin = end + 1;
      ++line_no;
      if (trim(line).empty()) continue;
      auto r = json::parse(line, nullptr, false);
      const std::string where = path + ":" + std::to_string(line_no);
      check(!r.is_discarded() && r.is_object(), where + ": not a JSON object");
      check(r.contains("prompt") && r["prompt"].is_string(), where + ": expected a string (field 'prompt')");
      check(r.contains("completions") && r["completions"].is_array() && r["completions"].size() >= 2,
            where + ": expected an array of at least 2 strings (field 'completions')");
      LabelRequest req{r["prompt"].get<std::string>(), {}};
      for (const auto& c : r["completions"]) {
        check(c.is_string(), where + ": expected a string (field 'completions')");
        req.completions.push_back(c.get<std::string>());
      }
      out.push_back(std::move(req));
    }
  } else {
    for (const auto& p : read_preferences(path)) out.push_back({p.prompt, {p.chosen, p.rejected}});
  }
  return out;
}

template <class T>
void take_sample(std::vector<T>& v, int64_t limit, uint64_t seed) {
  if (limit <= 0 || static_cast<size_t>(limit) >= v.size()) return;
  std::mt19937_64 rng(seed);
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
  v.resize(static_cast<size_t>(limit));
}

void add_rlaif_label(CLI::App& rlaif) {
  struct Args {
    FeedbackArgs fb;
    std::string input, policy, prompts, out, constitution;
    int64_t k = 4, limit = 0, max_new_tokens = 64;
    double temperature = 1.0;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = rlaif.add_subcommand(
      "label", "AI rankings under a constitution: every pair of completions judged in both orders, soft labels kept");
  add_feedback_options(*cmd, a->fb);
  cmd->add_option("--input", a->input,
                  "JSONL to rank: {prompt, completions: [...]} lines, or preference pairs (prompt/chosen/rejected, HH)")
      ->transform(detail::data_path_flag());
  cmd->add_option("--policy", a->policy, "Or sample the completions: a policy model (with --prompts)")
      ->transform(detail::data_path_flag());
  cmd->add_option("--prompts", a->prompts, "Prompts JSONL ({\"prompt\": ...}) for --policy")
      ->transform(detail::data_path_flag());
  cmd->add_option("--k", a->k, "Completions sampled per prompt (--policy)")->capture_default_str()->check(CLI::Range(2, 64));
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Length of the sampled completions")->capture_default_str();
  cmd->add_option("--temperature", a->temperature, "Temperature of the sampled completions")->capture_default_str();
  cmd->add_option("--constitution", a->constitution, "Constitution TOML (default: the built-in one)")
      ->transform(detail::data_path_flag());
  cmd->add_option("--limit", a->limit, "Rank at most this many prompts (a seeded sample; 0: all)")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the principle draws, samples and votes")->capture_default_str();
  cmd->add_option("--out,-o", a->out, "Rankings JSONL with soft labels (preference_probs), for rlhf rm train")->required();
  cmd->callback([a] {
    check(a->input.empty() != a->policy.empty(), "give --input FILE or --policy MODEL --prompts FILE (one of them)");
    check(a->policy.empty() || !a->prompts.empty(), "--policy needs --prompts");
    const Constitution constitution = constitution_or_default(a->constitution);
    std::vector<LabelRequest> requests;
    if (!a->input.empty()) {
      requests = read_label_requests(a->input);
      take_sample(requests, a->limit, a->seed);
    } else {
      auto prompts = read_prompts(a->prompts);
      take_sample(prompts, a->limit, a->seed);
      auto policy = load_model(a->policy, LoadOptions{a->fb.device, a->fb.dtype, {}});
      check(policy.tokenizer != nullptr, a->policy + ": no tokenizer found with the model");
      std::vector<std::vector<int32_t>> ids;
      for (const auto& p : prompts)
        for (int64_t j = 0; j < a->k; ++j) ids.push_back(encode_prompt(*policy.tokenizer, p));
      GenerateOptions g;
      g.max_new_tokens = a->max_new_tokens;
      g.sampling.temperature = static_cast<float>(a->temperature);
      g.seed = a->seed;
      const auto gens = generate(policy.model, *policy.tokenizer, ids, g);
      for (size_t i = 0; i < prompts.size(); ++i) {
        LabelRequest r{prompts[i], {}};
        for (int64_t j = 0; j < a->k; ++j) r.completions.push_back(gens[i * a->k + j].text);
        requests.push_back(std::move(r));
      }
    }
    auto fm = open_feedback_model(a->fb, a->seed);
    AiLabeler labeler(fm, constitution, a->seed);
    const auto rankings = labeler.rank(requests);
    write_rankings(a->out, rankings);
    // How decided the labels are, and how often the two orders agree on the winner.
    double decided = 0, consistent = 0, pairs = 0, unanswered = 0;
    for (const auto& rk : rankings)
      for (const auto& p : rk.extra["ai_feedback"]["pairs"]) {
        pairs += 1;
        unanswered += p["method"].get<std::string>().find("unanswered") != std::string::npos;
        decided += std::abs(p["p_i"].get<double>() - 0.5);
        consistent += (p["p_i_as_a"].get<double>() > 0.5) == (p["p_i_as_b"].get<double>() > 0.5);
      }
    std::cout << rankings.size() << " AI rankings (" << pairs << " pairs, each asked in both orders) -> " << a->out
              << "\nfeedback model " << fm->describe() << ", answered by " << fm->last_method()
              << (fm->last_method() == "votes" ? " (sampled votes: the endpoint gave no log-probabilities)" : "")
              << "; constitution '" << constitution.name << "'\nmean |P - 0.5| " << decided / std::max(1.0, pairs)
              << "; the two orders agree on the winner in " << consistent << " of " << pairs << " pairs\n";
    if (unanswered > 0)
      std::cout << unanswered << " of " << pairs << " pairs unanswered in an order (no option letter among the top "
                << "log-probabilities or the votes): P = 0.5 there\n";
  });
}

void add_rlaif_agreement(CLI::App& rlaif) {
  struct Args {
    FeedbackArgs fb;
    std::string pairs, out, constitution;
    int64_t limit = 200;
    uint64_t seed = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = rlaif.add_subcommand("agreement", "How often AI labels agree with human preference labels, with a 95% interval");
  add_feedback_options(*cmd, a->fb);
  cmd->add_option("--pairs", a->pairs,
                  "Human preference pairs: prompt/chosen/rejected JSONL or HH-RLHF dialogues (.jsonl or .jsonl.gz)")
      ->required()
      ->transform(detail::data_path_flag());
  cmd->add_option("--constitution", a->constitution, "Constitution TOML (default: the built-in one)");
  cmd->add_option("--limit", a->limit, "Pairs judged (a seeded sample; 0: all)")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Seed of the sample, the principle draws and votes")->capture_default_str();
  cmd->add_option("--out,-o", a->out, "JSON with the figure and every pair's judgement");
  cmd->callback([a] {
    const Constitution constitution = constitution_or_default(a->constitution);
    auto prefs = read_preferences(a->pairs);
    take_sample(prefs, a->limit, a->seed);
    std::vector<PairToJudge> pairs;
    for (const auto& p : prefs) pairs.push_back({p.prompt, p.chosen, p.rejected});
    auto fm = open_feedback_model(a->fb, a->seed);
    std::mt19937_64 rng(a->seed);
    const auto judged = judge_pairs(*fm, constitution, pairs, rng);
    // Agreement: the AI prefers the human's choice (a tie counts half).
    double agree = 0, p_sum = 0, consistent = 0;
    size_t unanswered = 0;
    json records = json::array();
    for (size_t i = 0; i < judged.size(); ++i) {
      const double p = judged[i].p_first;
      unanswered += judged[i].method.find("unanswered") != std::string::npos;
      agree += p > 0.5 ? 1.0 : p == 0.5 ? 0.5 : 0.0;
      p_sum += p;
      consistent += (judged[i].p_first_as_a > 0.5) == (judged[i].p_first_as_b > 0.5);
      records.push_back({{"prompt", prefs[i].prompt}, {"chosen", prefs[i].chosen}, {"rejected", prefs[i].rejected},
                         {"p_chosen", p}, {"p_chosen_as_a", judged[i].p_first_as_a},
                         {"p_chosen_as_b", judged[i].p_first_as_b},
                         {"principle", constitution.comparisons[judged[i].principle]}, {"method", judged[i].method}});
    }
    const double n = static_cast<double>(judged.size());
    const auto [lo, hi] = wilson_interval(agree, n);
    json result = {{"pairs", a->pairs},
                   {"n", judged.size()},
                   {"agreement", agree / n},
                   {"agreement_ci95", {lo, hi}},
                   {"mean_p_chosen", p_sum / n},
                   {"order_consistency", consistent / n},
                   {"unanswered", unanswered},
                   {"feedback_model", fm->describe()},
                   {"method", fm->last_method()},
                   {"constitution", constitution.name}};
    if (!a->out.empty()) {
      json full = result;
      full["records"] = records;
      write_file_atomic(a->out, dump_json(full, 1) + "\n");
    }
    std::printf("agreement with human labels: %.3f, 95%% interval [%.3f, %.3f], on %zu pairs\n", agree / n, lo, hi,
                judged.size());
    std::printf("mean P(human's choice) %.3f; the two orders agree on the winner in %.1f%% of pairs\n", p_sum / n,
                100 * consistent / n);
    std::printf("feedback model %s, answered by %s%s; constitution '%s'\n", fm->describe().c_str(),
                fm->last_method().c_str(),
                fm->last_method() == "votes" ? " (sampled votes: the endpoint gave no log-probabilities)" : "",
                constitution.name.c_str());
    if (unanswered > 0)
      std::printf("%zu of %zu pairs unanswered in an order (no option letter among the top log-probabilities or the "
                  "votes): counted as P = 0.5 there\n",
                  unanswered, judged.size());
  });
}

}  // namespace

void add_rlaif(CLI::App& app) {
  auto* rlaif = app.add_subcommand("rlaif", "AI feedback: preference labels from a feedback model under a constitution");
  rlaif->require_subcommand(1);
  add_rlaif_label(*rlaif);
  add_rlaif_agreement(*rlaif);
}

}  // namespace rlhf::cli
