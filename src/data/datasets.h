// Training data in the JSONL formats the Python trainers use, read with errors that name the
// file, line and field. Plain or gzip-compressed files are read alike.
//   SFT:          {"prompt": ..., "completion": ...}  or  {"messages": [{"role", "content"}...]}
//   Preferences:  {"prompt": ..., "chosen": ..., "rejected": ..., "margin"?, "chosen_prob"?}, or HH-RLHF style
//                 {"chosen": dialogue, "rejected": dialogue}: the shared prefix up to and
//                 including the last "\n\nAssistant:" is the prompt.
//   Rankings:     {"prompt": ..., "completions": [K texts], "ranking": [...], "labeler": ...}
//                 ranking lists completion indices best first; an inner list is a tie group,
//                 e.g. [2, [0, 3], 1]. Other fields (flags, notes) are kept in `extra`.
//                 A soft label (from the AI labeler): "preference_probs", K x K, [i][j] =
//                 P(completion i preferred over j); it sets each pair's chosen_prob.
#pragma once
#include <cstddef>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf {

struct ReadOptions {
  bool skip_bad = false;    // skip malformed lines (and count them) instead of failing
};

// Errors name the line: "<file>:<line>: <what> (field '<name>')"; lines count from 1 in the
// (decompressed) file, empty lines included. A file with no records is an Error.
struct ReadStats {
  size_t lines = 0;         // non-empty lines seen
  size_t skipped = 0;       // malformed lines skipped (skip_bad)
};

struct SftExample {
  std::string prompt;       // text the loss ignores
  std::string completion;   // text the loss is computed on
};

struct PreferencePair {
  std::string prompt, chosen, rejected;  // chosen/rejected are completions of prompt
  double margin = 0.0;      // optional "margin" field (Bradley-Terry with margin)
  size_t group = 0;         // index of the prompt/ranking it came from (same-batch option)
  int chosen_index = -1, rejected_index = -1;  // from rankings: indices into that ranking's completions
  // Soft label: the probability that chosen is preferred (Bradley-Terry with a target
  // probability); 1 for a hard label. From "chosen_prob" or a ranking's "preference_probs".
  double chosen_prob = 1.0;
};

struct Ranking {
  std::string prompt;
  std::vector<std::string> completions;
  std::vector<std::vector<int>> tiers;   // best first; each tier holds tied completion indices
  std::string labeler;
  nlohmann::json extra = nlohmann::json::object();  // any other fields (flags, note, ...)
};

// `chat_template`: how a `messages` list becomes prompt + completion. The list must end with
// an assistant message. The prompt is everything before it, rendered with the template and
// its generation prompt; the completion is what the full rendering adds after that prompt:
// the reply with the template's markup around it (" Hi" in hh, "Hi<|im_end|>\n" in chatml),
// as TRL does, so the model learns to end its turn. Required only when the file has
// `messages` lines (Error naming the line otherwise, even with skip_bad).
std::vector<SftExample> read_sft(const std::filesystem::path& path, const ReadOptions& opt = {},
                                 const std::string& chat_template = "", ReadStats* stats = nullptr);
// Prompts for rollouts: {"prompt": ...} per line (other fields ignored).
std::vector<std::string> read_prompts(const std::filesystem::path& path, const ReadOptions& opt = {},
                                      ReadStats* stats = nullptr);
// The prompts with their whole rows, for what reads other fields beside the prompt (the
// verifiers' gold answers and tests, rewards/rewards.h); `where` is "<file>:<line>".
struct PromptRow {
  std::string prompt;
  nlohmann::json row;
  std::string where;
};
std::vector<PromptRow> read_prompt_rows(const std::filesystem::path& path, const ReadOptions& opt = {},
                                        ReadStats* stats = nullptr);
std::vector<PreferencePair> read_preferences(const std::filesystem::path& path, const ReadOptions& opt = {},
                                             ReadStats* stats = nullptr);
std::vector<Ranking> read_rankings(const std::filesystem::path& path, const ReadOptions& opt = {},
                                   ReadStats* stats = nullptr);
void write_rankings(const std::filesystem::path& path, const std::vector<Ranking>& rankings);  // atomic

// InstructGPT: every pair of completions in different tiers, better one as chosen
// (K choose 2 minus tied pairs). `group` is the ranking's index. With "preference_probs" in
// a ranking's extra fields, chosen_prob = P[chosen][rejected] (Error when malformed).
std::vector<PreferencePair> rankings_to_pairs(const std::vector<Ranking>& rankings);

// Preference pairs from a preferences file or (K-choose-2) a rankings file; format: auto (by
// the fields of the first line), preferences or rankings.
std::vector<PreferencePair> read_pairs(const std::filesystem::path& path, const std::string& format,
                                       const ReadOptions& opt = {});

// Splits an HH-RLHF dialogue pair into prompt/chosen/rejected (see above). Error if the
// two dialogues share no "\n\nAssistant:" prefix.
PreferencePair split_hh_pair(const std::string& chosen, const std::string& rejected, const std::string& where);

}  // namespace rlhf
