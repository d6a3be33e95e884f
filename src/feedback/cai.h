// Supervised Constitutional AI (Bai et al. 2022, section 3, "SL-CAI"): the model answers
// red-team prompts, then critiques and revises its own reply, each round under a principle of
// the constitution drawn at random; the final revisions, in the conversation format, become an
// SFT file (`rlhf sft` trains on it), optionally mixed with helpful SFT data so the tuned model
// stays helpful.
#pragma once
#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

#include "feedback/constitution.h"

namespace rlhf {

class Llm;

struct CaiConfig {
  std::string model;              // the model that answers, critiques and revises
  std::string prompts;            // red-team prompts (feedback/redteam.h's prompt sets)
  std::string constitution;       // empty: the built-in default
  std::string out_dir = "runs/cai";
  int64_t rounds = 2;
  int64_t limit = 0;
  int64_t seed = 0;
  int64_t max_tokens = 256;
  double temperature = 0.7;
  bool few_shot = true;
  std::string helpful_data;
  std::string helpful_chat_template = "hh";
  double helpful_ratio = 1.0;
  std::string device = "cpu";

  template <class V>
  void visit(V&& v) {
    v("model", model, "Model that answers, critiques and revises: HF folder, .gguf, llama2.c .bin, or http(s):// endpoint");
    v("prompts", prompts, "Red-team prompts: advbench, xstest (the data folder's sets), or a file: JSONL with a 'prompt' per line, or CSV with a 'prompt' or 'goal' column");
    v("constitution", constitution, "Constitution TOML file (empty: the built-in default, constitutions/default.toml)");
    v("out_dir", out_dir, "Output folder: transcript.jsonl, sft.jsonl, config.toml");
    v("rounds", rounds, "Critique -> revision rounds per prompt, each under a freshly drawn principle");
    v("limit", limit, "At most N prompts (0 = all), drawn as rlhf redteam eval draws them: safe and unsafe alternate, categories take turns");
    v("seed", seed, "Seed of the principle draws, the sampling and the mixing");
    v("max_tokens", max_tokens, "Tokens per reply, critique or revision at most");
    v("temperature", temperature, "Sampling temperature of replies, critiques and revisions; 0 = greedy");
    v("few_shot", few_shot, "Show the constitution's worked examples before each critique and revision request");
    v("helpful_data", helpful_data, "Helpful SFT JSONL (prompt/completion or messages) mixed into sft.jsonl; empty = none");
    v("helpful_chat_template", helpful_chat_template, "Chat template for `messages` lines of helpful_data: llama2, chatml or hh");
    v("helpful_ratio", helpful_ratio, "Helpful examples per revised example in sft.jsonl (drawn at random; at most all of them)");
    v("device", device, "cpu, cuda or cuda:N (local models)");
  }
};

struct CaiRound {
  std::string principle;  // the drawn principle's name
  std::string critique, revision;
  bool kept = true;       // false: the revision was empty, so the reply before it stays
};

struct CaiTranscript {
  std::string prompt;     // the red-team prompt as given
  std::string response;   // the model's first reply
  std::vector<CaiRound> rounds;
  std::string final_response;  // the last kept revision; the first reply when none was kept
  bool revised() const;
};

struct CaiStats {
  int64_t prompts = 0, revisions = 0;
  int64_t unusable_revisions = 0;  // empty after trimming; the previous reply was kept
  int64_t unrevised_prompts = 0;   // no revision kept: left out of sft.jsonl
  int64_t sft_examples = 0, helpful_examples = 0;
};

// The critique request for `response` under principle `p`, after the few-shot examples when
// `few_shot` (each a worked critique and revision, in the same templates).
std::string critique_prompt(const Constitution& c, const Principle& p, const std::string& prompt,
                            const std::string& response, bool few_shot);
// The revision request: the critique prompt, the model's critique, then c.revision.
std::string revision_prompt(const Constitution& c, const Principle& p, const std::string& critique_prompt,
                            const std::string& critique);

// The principles (indices into a list of `count`) drawn for the rounds of prompt `index`: a
// function of the seed and the index only (not of the other prompts, nor of the round count).
std::vector<size_t> draw_principles(size_t count, int64_t rounds, uint64_t seed, size_t index);

// The loop: one reply per prompt, then `cfg.rounds` of critique and revision; every step is
// one Llm::complete call for all prompts (announced on `log` when given).
std::vector<CaiTranscript> critique_revise(Llm& llm, const std::vector<std::string>& prompts, const Constitution& c,
                                           const CaiConfig& cfg, std::ostream* log = nullptr);

// Range checks, before anything is loaded: one-line errors naming the field.
void validate(const CaiConfig& cfg);

// `rlhf cai revise`: validates the config, reads the prompts, the constitution and the helpful
// data, then opens cfg.model (unless `llm` is given: tests pass a scripted one), runs the loop
// and writes OUT/transcript.jsonl, OUT/sft.jsonl and OUT/config.toml (atomically).
CaiStats cai_revise(const CaiConfig& cfg, Llm* llm = nullptr);

}  // namespace rlhf
