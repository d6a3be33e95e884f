// The labeling web server (`rlhf label serve`, and the pipeline's `labeler = "web"`): the
// page labelers rank completions on, its JSON API over a LabelStore, and a background
// worker that generates the K completions of every prompt ahead of time.
//
// API (JSON bodies; `Authorization: Bearer SESSION` on everything after sign-in):
//   POST /api/signin  {"name", "token"}                      -> {"session", "labeler"}
//   GET  /api/task                                          -> {"task": {"prompt_id", "prompt",
//        "completions": [{"id", "text"}]} or null, "progress", "flags", "generating"}
//   POST /api/submit  {"prompt_id", "ranking": [[ids] | id, ...] best first, "flags": {id: [..]},
//                      "note"}                              -> {"status": "stored"|"duplicate", "progress"}
//   GET  /api/progress, GET /api/stats
// Errors: {"error": message} with 400 (bad request), 401 (sign-in, or a session expired or made
// with a token that changed since), 404 (unknown prompt), 409 (not shown to you / a different
// ranking already stored), 408/413/431 (a request too slow or too large: guarded_http.h), 429
// (too many failed sign-ins from one address; Retry-After says when to try again). A 200 from
// /api/submit means the ranking is committed to disk.
#pragma once
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "feedback/label_store.h"

namespace rlhf {

class GuardedHttpServer;

class LabelServer {
 public:
  explicit LabelServer(LabelStore& store);
  ~LabelServer();
  // Binds host:port (port 0: any free port) and serves on a background thread; returns the
  // port. Error when the port is not in 0..65535 or the address cannot be bound.
  int start(const std::string& host, int64_t port);
  void stop();
  int port() const { return port_; }
  // Prompts still waiting for completions, shown on the page while the worker runs.
  std::atomic<int64_t> generating{0};

 private:
  LabelStore& store_;
  std::unique_ptr<GuardedHttpServer> http_;
  std::thread thread_;
  int port_ = 0;
};

// prompts -> K completion texts for each.
using CompleteFn = std::function<std::vector<std::vector<std::string>>(const std::vector<std::string>& prompts)>;

// Fills in the completions of every prompt in the store that has none, `batch` prompts at a
// time, on a background thread; stores each prompt's completions in one transaction. Errors
// end the worker and are kept for error().
class CompletionWorker {
 public:
  CompletionWorker(LabelStore& store, CompleteFn complete, int64_t batch = 8, std::atomic<int64_t>* remaining = nullptr);
  ~CompletionWorker();  // stops after the current batch
  void wait();          // until every prompt has completions (or the worker failed)
  bool done() const { return done_; }
  std::string error() const;

 private:
  std::thread thread_;
  std::atomic<bool> stop_{false}, done_{false};
  std::string error_;
  mutable std::mutex mu_;
};

// `rlhf label serve`: where the store is, how the page is reached, who may label.
struct LabelServeOptions {
  std::string db;
  std::string host = "127.0.0.1";
  int64_t port = 8080;                  // 0: any free port; at most 65535
  int64_t k = 4;                        // completions per prompt
  int64_t labelers_per_prompt = 1;      // rankings wanted per prompt
  std::string token;                    // shared access token (any name); empty: keep the stored one
  std::vector<std::string> labelers;    // "NAME=TOKEN": a labeler with their own token; when any is
                                        // given, these replace the stored ones
  double session_hours = 12;            // a sign-in lasts this long
};

// A prompt to label, with its completions when they come from elsewhere (else generated).
struct LabelPrompt {
  std::string prompt;
  std::vector<std::string> completions;
};
// Error unless 0 <= port <= 65535 (the --port of `rlhf label serve`, the pipeline's web_port).
void check_port(int64_t port);

// JSONL: {"prompt": ..., "completions": [...] (optional, at least 2)} per line; Error naming
// file and line for a bad one.
std::vector<LabelPrompt> read_label_prompts(const std::filesystem::path& path);

// Checks the options (Error naming the option), stores settings, access and prompts (with
// their completions when given). When no token is set at all, makes a shared one and prints it.
void prepare_label_store(LabelStore& store, const LabelServeOptions& opt, const std::vector<LabelPrompt>& prompts);

// Serves the page until `finished()` (asked twice a second) is true; prompts without
// completions get them from `make_completer()` (called only when some are missing) on a
// background thread. Prints "serving http://HOST:PORT/" on stdout once listening.
void serve_labels(LabelStore& store, const LabelServeOptions& opt, const std::function<CompleteFn()>& make_completer,
                  const std::function<bool()>& finished);

struct LoadedModel;
// K sampled completions per prompt from `policy` (kept alive by the returned function).
CompleteFn policy_completer(std::shared_ptr<LoadedModel> policy, int64_t k, int64_t max_new_tokens, double temperature,
                            uint64_t seed);

}  // namespace rlhf
