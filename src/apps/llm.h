// One interface for "a language model that completes text", used by the application layer
// (RAG, chain-of-thought, PAL, ReAct) and AI feedback: a model loaded in-process (any format
// load_model reads) or an OpenAI-compatible endpoint (`rlhf serve`, llama.cpp's server, vLLM,
// Ollama) given by URL. Prompts are plain text: the caller formats them (templates, chat).
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/model.h"

namespace rlhf {

struct CompletionParams {
  int64_t max_tokens = 256;
  float temperature = 0.0f;            // 0 = greedy
  float top_p = 1.0f;
  std::vector<std::string> stop;       // the text is cut before the first one
  uint64_t seed = 0;                   // completion j of prompt i draws from sequence_rng(seed, i * n + j)
  int n = 1;                           // completions per prompt
};

struct Completion {
  std::string text;
  std::string finish_reason;           // "eos", "stop" or "length" (an endpoint's "stop" covers EOS too)
  int64_t completion_tokens = 0;
};

class Llm {
 public:
  virtual ~Llm() = default;
  // n completions for each prompt, decoded together where the backend can.
  virtual std::vector<std::vector<Completion>> complete(const std::vector<std::string>& prompts,
                                                        const CompletionParams& params) = 0;
  // log P(candidate | prompt) for each candidate continuation of each prompt ([prompt][candidate]),
  // summed over the candidate's tokens; -infinity where an endpoint's top log-probabilities
  // do not list it. std::nullopt when the backend gives no log-probabilities at all (the caller
  // falls back to sampling). AI feedback reads option letters ("A", "B") this way.
  virtual std::optional<std::vector<std::vector<double>>> continuation_logprobs(
      const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) = 0;
  virtual std::string describe() const = 0;  // for logs and outputs: the path or URL
};

// A model in this process. Prompts are encoded with encode_prompt (BOS where the tokenizer
// wants one); the rows of one call run as one batch (GenerateOptions::max_batch).
class LocalLlm : public Llm {
 public:
  LocalLlm(const std::string& path, const LoadOptions& options = {}, int64_t max_batch = 64);
  std::vector<std::vector<Completion>> complete(const std::vector<std::string>& prompts,
                                                const CompletionParams& params) override;
  // Exact: each candidate teacher-forced after the prompt.
  std::optional<std::vector<std::vector<double>>> continuation_logprobs(
      const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) override;
  std::string describe() const override { return path_; }
  LoadedModel& loaded() { return lm_; }  // the network and tokenizer (dense retrieval uses them)

 private:
  std::string path_;
  LoadedModel lm_;
  int64_t max_batch_;
};

struct EndpointOptions {
  std::string api_key;                 // sent as "Authorization: Bearer KEY" when set
  std::string model;                   // the request's "model" field (empty: the server's first in /v1/models)
  double timeout_seconds = 120;        // per request
  int retries = 2;                     // on connection errors, 429 and 5xx, with backoff
  int64_t max_requests = 0;            // the budget of HTTP requests over the client's life; 0 = no limit
  int concurrency = 8;                 // requests in flight at once
  int top_logprobs = 20;               // alternatives asked for when reading log-probabilities (OpenAI allows 20)
};

// An OpenAI-compatible endpoint: POST {base}/v1/completions, one request per prompt (n per
// request), run concurrently. `base` is "http://host:port" (a trailing /v1 is accepted).
// Errors (HTTP status, timeouts, budget spent) throw Error naming the URL.
class EndpointLlm : public Llm {
 public:
  EndpointLlm(const std::string& base_url, const EndpointOptions& options = {});
  ~EndpointLlm() override;
  std::vector<std::vector<Completion>> complete(const std::vector<std::string>& prompts,
                                                const CompletionParams& params) override;
  // One 1-token request per prompt with `top_logprobs`; a candidate's log-probability is that
  // of the listed next token whose text is the candidate's (spaces included), so candidates
  // should be single tokens (option letters after "("): then it equals LocalLlm's.
  std::optional<std::vector<std::vector<double>>> continuation_logprobs(
      const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) override;
  std::string describe() const override { return base_; }
  int64_t requests_made() const;

 private:
  struct Impl;
  std::string base_;
  std::unique_ptr<Impl> impl_;
};

// "http://..." or "https://..." -> EndpointLlm (its API key, when `endpoint` gives none, from
// $OPENAI_API_KEY); anything else -> LocalLlm on that path.
std::unique_ptr<Llm> open_llm(const std::string& spec, const LoadOptions& options = {},
                              const EndpointOptions& endpoint = {});

}  // namespace rlhf
