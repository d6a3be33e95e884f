#include "feedback/cai.h"

#include <algorithm>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/app_io.h"
#include "apps/llm.h"
#include "core/error.h"
#include "core/io.h"
#include "data/datasets.h"
#include "feedback/redteam.h"
#include "generate/sampler.h"
#include "train/config_fields.h"
#include "train/train_loop.h"

namespace rlhf {

using json = nlohmann::json;

bool CaiTranscript::revised() const {
  return std::any_of(rounds.begin(), rounds.end(), [](const CaiRound& r) { return r.kept; });
}

namespace {

// Independent random streams from one seed, one per purpose: the principle draws, the mixing,
// and each Llm call (whose own seed then picks a stream per prompt).
enum Stream : uint64_t { kPrinciples = 0, kMixing = 1, kCalls = 2 };
uint64_t stream_seed(uint64_t seed, uint64_t stream) { return sequence_rng(seed, stream)(); }

std::string conversation(const Constitution& c, const std::string& prompt) {
  return fill_template(c.conversation, {{"prompt", prompt}});
}

// One critique request (without few-shot examples).
std::string critique_request(const Constitution& c, const Principle& p, const std::string& prompt,
                             const std::string& response) {
  return fill_template(c.critique, {{"conversation", conversation(c, prompt)}, {"response", response}, {"request", p.critique}});
}

const Principle& principle_named(const Constitution& c, const std::string& name) {
  for (const auto& p : c.principles)
    if (p.name == name) return p;
  throw Error(c.source + ": no principle is named \"" + name + "\"");  // load_constitution checks this
}

}  // namespace

std::string critique_prompt(const Constitution& c, const Principle& p, const std::string& prompt,
                            const std::string& response, bool few_shot) {
  std::string shots;
  if (few_shot)
    for (const auto& e : c.examples) {
      const Principle& ep = e.principle.empty() ? p : principle_named(c, e.principle);
      shots += critique_request(c, ep, e.prompt, e.response) + " " + e.critique +
               fill_template(c.revision, {{"request", ep.revision}}) + " " + e.revision + "\n\n";
    }
  return shots + critique_request(c, p, prompt, response);
}

std::string revision_prompt(const Constitution& c, const Principle& p, const std::string& critique_prompt,
                            const std::string& critique) {
  return critique_prompt + " " + critique + fill_template(c.revision, {{"request", p.revision}});
}

std::vector<size_t> draw_principles(size_t count, int64_t rounds, uint64_t seed, size_t index) {
  check(count > 0, "draw_principles: the constitution has no principles");
  auto rng = sequence_rng(stream_seed(seed, kPrinciples), index);
  std::vector<size_t> drawn;
  // mt19937_64's output is fixed by the standard (a distribution's is not): the same draws everywhere.
  for (int64_t r = 0; r < rounds; ++r) drawn.push_back(rng() % count);
  return drawn;
}

std::vector<CaiTranscript> critique_revise(Llm& llm, const std::vector<std::string>& prompts, const Constitution& c,
                                           const CaiConfig& cfg, std::ostream* log) {
  check(!c.principles.empty(), c.source + ": no [[principles]]: supervised CAI needs critique/revision principles");
  CompletionParams params;
  params.max_tokens = cfg.max_tokens;
  params.temperature = static_cast<float>(cfg.temperature);
  params.stop = c.stop;
  uint64_t call = 0;
  auto complete = [&](const std::vector<std::string>& batch, const std::string& step) {
    if (log) *log << "cai: " << step << " (" << batch.size() << " prompts, " << llm.describe() << ")" << std::endl;
    params.seed = stream_seed(cfg.seed, kCalls + call++);
    auto out = llm.complete(batch, params);
    check(out.size() == batch.size(), llm.describe() + ": " + std::to_string(out.size()) + " answers to " +
                                          std::to_string(batch.size()) + " prompts");
    std::vector<std::string> texts;
    for (const auto& choices : out) texts.push_back(choices.empty() ? "" : trim(choices[0].text));
    return texts;
  };

  // 1. The first replies.
  std::vector<CaiTranscript> t(prompts.size());
  std::vector<std::string> batch;
  for (const auto& p : prompts) batch.push_back(conversation(c, p));
  auto replies = complete(batch, "replies");
  std::vector<std::vector<size_t>> drawn;
  for (size_t i = 0; i < prompts.size(); ++i) {
    t[i].prompt = prompts[i];
    t[i].response = t[i].final_response = replies[i];
    drawn.push_back(draw_principles(c.principles.size(), cfg.rounds, static_cast<uint64_t>(cfg.seed), i));
  }

  // 2. Each round: a critique of the current reply under a drawn principle, then a revision,
  //    which becomes the reply the next round critiques.
  for (int64_t r = 0; r < cfg.rounds; ++r) {
    std::vector<std::string> critique_prompts;
    for (size_t i = 0; i < t.size(); ++i)
      critique_prompts.push_back(
          critique_prompt(c, c.principles[drawn[i][r]], t[i].prompt, t[i].final_response, cfg.few_shot));
    const std::string round = "round " + std::to_string(r + 1) + "/" + std::to_string(cfg.rounds);
    auto critiques = complete(critique_prompts, round + ": critiques");
    batch.clear();
    for (size_t i = 0; i < t.size(); ++i)
      batch.push_back(revision_prompt(c, c.principles[drawn[i][r]], critique_prompts[i], critiques[i]));
    auto revisions = complete(batch, round + ": revisions");
    for (size_t i = 0; i < t.size(); ++i) {
      CaiRound round{c.principles[drawn[i][r]].name, critiques[i], revisions[i], !revisions[i].empty()};
      if (round.kept) t[i].final_response = revisions[i];
      t[i].rounds.push_back(std::move(round));
    }
  }
  return t;
}

void validate(const CaiConfig& cfg) {
  check(!cfg.model.empty(), "model is required (a model path or an http(s):// endpoint)");
  check(!cfg.prompts.empty(), "prompts is required (JSONL or CSV of red-team prompts)");
  check(!cfg.out_dir.empty(), "out_dir is required");
  check_range(cfg.rounds >= 1, "rounds", cfg.rounds, "at least 1");
  check_range(cfg.limit >= 0, "limit", cfg.limit, "0 (all) or more");
  check_range(cfg.max_tokens >= 1, "max_tokens", cfg.max_tokens, "at least 1");
  check_range(std::isfinite(cfg.temperature) && cfg.temperature >= 0, "temperature", cfg.temperature, "0 or more");
  check_range(std::isfinite(cfg.helpful_ratio) && cfg.helpful_ratio >= 0, "helpful_ratio", cfg.helpful_ratio, "0 or more");
}

namespace {

json to_json(const CaiTranscript& t) {
  json rounds = json::array();
  for (const auto& r : t.rounds)
    rounds.push_back({{"principle", r.principle}, {"critique", r.critique}, {"revision", r.revision}, {"kept", r.kept}});
  return {{"prompt", t.prompt}, {"response", t.response}, {"rounds", rounds}, {"final", t.final_response}};
}

}  // namespace

CaiStats cai_revise(const CaiConfig& cfg, Llm* llm) {
  validate(cfg);
  const Constitution c = constitution_or_default(cfg.constitution);
  std::vector<std::string> prompts;
  for (auto& p : sample_prompts(read_prompt_set(prompt_set_path(cfg.prompts)), cfg.limit, cfg.seed))
    prompts.push_back(std::move(p.prompt));
  std::vector<SftExample> helpful;  // read before the long loop: a bad file fails at once
  if (!cfg.helpful_data.empty()) helpful = read_sft(cfg.helpful_data, {}, cfg.helpful_chat_template);

  std::unique_ptr<Llm> opened;  // after the inputs, so a bad one fails before a long load
  if (!llm) llm = (opened = open_llm(cfg.model, LoadOptions{.device = cfg.device})).get();
  auto transcripts = critique_revise(*llm, prompts, c, cfg, &std::cerr);

  CaiStats stats;
  stats.prompts = static_cast<int64_t>(transcripts.size());
  std::vector<json> records, sft;
  for (const auto& t : transcripts) {
    records.push_back(to_json(t));
    for (const auto& r : t.rounds) stats.unusable_revisions += !r.kept;
    stats.revisions += static_cast<int64_t>(t.rounds.size());
    // A reply never revised is the model's own answer to a red-team prompt: not a target.
    if (!t.revised()) {
      ++stats.unrevised_prompts;
      continue;
    }
    sft.push_back({{"prompt", conversation(c, t.prompt)}, {"completion", " " + t.final_response}, {"source", "cai"}});
  }
  stats.sft_examples = static_cast<int64_t>(sft.size());

  // Helpful data: a random helpful_ratio * |revised| of it, then everything shuffled together.
  if (!helpful.empty()) {
    std::mt19937_64 rng(stream_seed(static_cast<uint64_t>(cfg.seed), kMixing));
    std::shuffle(helpful.begin(), helpful.end(), rng);
    const auto k = std::min<size_t>(helpful.size(), std::llround(cfg.helpful_ratio * static_cast<double>(sft.size())));
    for (size_t i = 0; i < k; ++i)
      sft.push_back({{"prompt", helpful[i].prompt}, {"completion", helpful[i].completion}, {"source", "helpful"}});
    stats.helpful_examples = static_cast<int64_t>(k);
    std::shuffle(sft.begin(), sft.end(), rng);
  }

  const std::filesystem::path out(cfg.out_dir);
  std::filesystem::create_directories(out);
  CaiConfig resolved = cfg;
  write_file_atomic(out / "config.toml", "# rlhf cai revise, constitution: " + c.source + "\n" + to_toml(resolved));
  write_jsonl(out / "transcript.jsonl", records);
  write_jsonl(out / "sft.jsonl", sft);
  return stats;
}

}  // namespace rlhf
