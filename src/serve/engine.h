// Continuous batching: one thread owns the model and decodes every running sequence together,
// one token per step. A request that arrives while others run joins the batch at the next
// step: its prompt is prefilled on its own (one forward), its first token sampled, and its
// keys and values are placed in the shared cache; a sequence that finishes, or whose client
// went away, leaves the batch at once.
//
// The shared KV cache holds each row left-padded to a common length: row b's real positions
// are the columns [start_b, length). A row that joins with a prompt shorter than the batch's
// length is padded on the left; a longer prompt shifts the batch right. Columns that no row
// uses any more (every older row finished) are cut off when rows leave. Rows see only their
// own columns (attention windows, or a -inf mask over zero-filled padding), so a sequence
// decodes the same tokens alone or in any batch.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "generate/sampler.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {

struct TokenLogprob {
  int32_t id;
  float logprob;
};

// What a request's callback receives, once per generated token of a choice, and once more
// (or with the last token) when the choice ends.
struct ChoiceEvent {
  int index = 0;                   // the choice (0..n-1)
  std::string delta;               // new text: never part of a stop string or a split UTF-8 character
  int32_t token = -1;              // the token sampled this step; -1 in a final event that adds none
  float logprob = 0;               // log p(token) under the model (temperature 1, before truncation)
  std::vector<TokenLogprob> top;   // the top_logprobs most likely tokens, most likely first
  std::string finish_reason;       // in a choice's last event: "stop" (EOS, stop token or string), "length",
                                   // or "error" (then `delta` is the message)
  int64_t completion_tokens = 0;   // in the last event: tokens this choice generated (EOS included)
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  int n = 1;
  int64_t max_tokens = 256;
  SamplingParams sampling;
  uint64_t seed = 0;                   // choice j draws from sequence_rng(seed, j)
  std::vector<std::string> stop;       // the text is cut before the first one; none empty
  std::vector<int32_t> stop_ids;       // tokens that end a choice (EOS, end of turn); not in the text
  int top_logprobs = -1;               // -1: no logprobs; 0: the sampled token's; k: and the k most likely
  // Called on the engine thread, in order, for every event of every choice; keep it short.
  std::function<void(const ChoiceEvent&)> on_event;
  // Set by the client's side (a closed connection): the request's rows leave at the next step
  // and no more events are sent.
  std::atomic<bool> cancelled{false};
};

struct EngineOptions {
  int64_t max_rows = 32;   // sequences decoded together; a request waits until its n rows fit
  size_t max_queue = 64;   // requests waiting to join; submit() refuses past this
};

struct EngineStats {
  int64_t steps = 0;           // batched decode steps
  int64_t tokens = 0;          // tokens generated
  int64_t max_batch = 0;       // the most rows one step decoded
  int64_t requests = 0;        // requests finished or cancelled
};

class Engine {
 public:
  // The model must stay alive and unused by others while the engine runs. With `own_thread`
  // the engine decodes on a thread of its own; without, on the thread that calls run_here().
  Engine(Transformer model, const Tokenizer& tok, const EngineOptions& options = {}, bool own_thread = true);
  ~Engine();  // finishes nothing: pending requests are dropped, the thread joined

  // Decodes on the calling thread until `should_stop` returns true (polled while idle and
  // after every step). For an engine made without its own thread: a process's main thread
  // already has an OpenMP team, and a second team on another thread made each decode step
  // about twice as slow on 2 cores (its workers sleep between parallel regions).
  void run_here(const std::function<bool()>& should_stop);

  // Queues a request (prompt not empty, ids in the vocabulary, 1 <= n <= max_rows,
  // max_tokens >= 1; Error otherwise). False when the queue is full.
  bool submit(std::shared_ptr<EngineRequest> request);
  size_t queued() const;
  EngineStats stats() const;
  const EngineOptions& options() const { return opt_; }

 private:
  struct Row;
  void run(const std::function<bool()>& should_stop);
  void admit(const std::shared_ptr<EngineRequest>& request);
  void step();
  // Moves every row's columns by `shift` (right > 0, left < 0: cutting columns no row reads)
  // into a cache of `capacity` columns.
  void rebuild(int64_t shift, int64_t capacity);
  void drop_rows(const std::vector<size_t>& keep);  // keeps these batch rows, in this order

  Transformer model_;
  const Tokenizer& tok_;
  EngineOptions opt_;
  std::vector<std::unique_ptr<Row>> rows_;  // batch row -> state
  KVCache cache_;                           // (rows, H_kv, D, capacity) per layer

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<EngineRequest>> queue_;
  EngineStats stats_;
  bool stopping_ = false;
  std::thread thread_;
};

// How many leading bytes of `text` can be shown now: not a trailing incomplete UTF-8
// character, not a tail that may yet grow into one of `stops`.
size_t stable_prefix(const std::string& text, const std::vector<std::string>& stops);

}  // namespace rlhf
