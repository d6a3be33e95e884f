// The labeling store: prompts, their K completions, labelers, the tasks shown to them and
// their rankings, in one SQLite file (WAL mode). Every write is one transaction with
// prepared statements; a submission is validated before it is written and is durable when
// submit() returns, so a labeler's acknowledged work survives the process being killed.
// Thread-safe: one connection guarded by a mutex (the web server calls it from its pool).
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "data/datasets.h"

struct sqlite3;

namespace rlhf {

// A request a labeler can fix, with the HTTP status the server answers it with.
struct LabelError : Error {
  int status;
  LabelError(int status, const std::string& message) : Error(message), status(status) {}
};

// The failure flags a labeler can put on a completion (InstructGPT's labeling guide, grouped
// as helpful / harmless / honest).
const std::vector<std::string>& label_flags();

struct LabelTask {
  int64_t prompt_id = 0;
  std::string prompt;
  std::vector<int64_t> completion_ids;  // in the order shown to this labeler
  std::vector<std::string> completions;  // same order
};

struct LabelSubmission {
  int64_t prompt_id = 0;
  std::string labeler;
  std::vector<std::vector<int64_t>> ranking;              // completion ids, best tier first; ties share a tier
  std::map<int64_t, std::vector<std::string>> flags;      // completion id -> flags from label_flags()
  std::string note;
};

struct LabelProgress {
  int64_t prompts = 0;           // prompts in the store
  int64_t ready = 0;             // prompts whose completions exist
  int64_t submissions = 0;       // rankings stored, all labelers
  int64_t target = 0;            // prompts * labelers_per_prompt
  int64_t done_prompts = 0;      // prompts with labelers_per_prompt rankings
  int64_t mine = 0;              // rankings by the asking labeler
};

struct LabelerPairStats {
  std::string a, b;
  int64_t shared_prompts = 0;
  double agreement = 0;   // share of completion pairs both ordered strictly that they order alike
  double kendall_tau = 0;  // mean tau-b over shared prompts where it is defined
};

struct LabelStats {
  std::map<std::string, int64_t> counts;   // rankings per labeler
  std::vector<LabelerPairStats> pairs;     // every pair of labelers with shared prompts
  int64_t shared_prompts = 0;              // prompt x labeler-pair comparisons, all pairs
  double agreement = 0, kendall_tau = 0;   // pooled over all pairs (NaN when nothing is shared)
};

// Kendall's tau-b of two rankings of the same items (tier lists of item ids, best first):
// (concordant - discordant) / sqrt(untied pairs in a * untied pairs in b); NaN when either
// ranking ties everything.
double kendall_tau_b(const std::vector<std::vector<int64_t>>& a, const std::vector<std::vector<int64_t>>& b);
// Pairwise agreement: of the item pairs both rankings order strictly, the share ordered the
// same way; `pairs` (optional) receives how many such pairs there were.
double pairwise_agreement(const std::vector<std::vector<int64_t>>& a, const std::vector<std::vector<int64_t>>& b,
                          int64_t* pairs = nullptr);

class LabelStore {
 public:
  // Opens (creating when missing) the database; Error naming the file when it is not a
  // labeling store or cannot be opened.
  explicit LabelStore(const std::filesystem::path& path);
  ~LabelStore();
  LabelStore(const LabelStore&) = delete;
  LabelStore& operator=(const LabelStore&) = delete;

  const std::filesystem::path& path() const { return path_; }

  // Settings kept in the database (labelers_per_prompt, shared_token, schema_version).
  std::optional<std::string> meta(const std::string& key);
  void set_meta(const std::string& key, const std::string& value);
  int64_t labelers_per_prompt();

  // Adds a prompt (no-op when the same text is there); returns its id.
  int64_t add_prompt(const std::string& text);
  // Stores a prompt's completions (one transaction); Error when it already has some.
  void add_completions(int64_t prompt_id, const std::vector<std::string>& texts);
  int64_t completion_count(int64_t prompt_id);
  // Prompts that have no completions yet, in id order.
  std::vector<std::pair<int64_t, std::string>> prompts_without_completions();

  // Access: a per-labeler token, or the shared token (meta "shared_token") for any name.
  void set_labeler(const std::string& name, const std::string& token);
  // Replaces every per-labeler token with these (name, token) pairs, in one transaction.
  void set_labelers(const std::vector<std::pair<std::string, std::string>>& labelers);
  // Signs in; returns a session id. LabelError(401) for a wrong name/token.
  std::string sign_in(const std::string& name, const std::string& token);
  // The labeler a session belongs to. LabelError(401) when unknown, older than meta
  // "session_seconds" (default 12 h), or made with a token that is no longer the labeler's
  // (changed, or the named labeler removed).
  std::string session_labeler(const std::string& session);
  // Seconds a sign-in lasts (meta "session_seconds"; 12 h when unset).
  double session_seconds();

  // The labeler's pending task (the one shown and not yet submitted), else the next prompt
  // that still needs rankings and that this labeler has not seen; nullopt when none is left.
  std::optional<LabelTask> next_task(const std::string& labeler);
  enum class SubmitResult { stored, duplicate };
  // Validates and stores a ranking. LabelError: 404 unknown prompt, 409 prompt never shown to
  // this labeler or a different ranking already stored, 400 not a permutation of exactly the
  // completions shown / unknown flag / note too long. Resubmitting the stored ranking returns
  // `duplicate` and writes nothing.
  SubmitResult submit(const LabelSubmission& s);

  LabelProgress progress(const std::string& labeler = "");
  LabelStats stats();
  int64_t submission_count();
  // Every stored ranking in the trainers' format: completions in stored order, `ranking`
  // indices into them, extra fields flags (one list per completion), note, prompt_id,
  // submitted_at. Ordered by submission id.
  std::vector<Ranking> export_rankings();

 private:
  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  std::mutex mu_;
};

}  // namespace rlhf
