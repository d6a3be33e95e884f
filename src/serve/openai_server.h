// `rlhf serve`: an OpenAI-compatible HTTP server over the continuous-batching engine
// (serve/engine.h), with the habits of llama.cpp's llama-server and vLLM:
//   GET  /v1/models, /health (with the engine's counters: steps, tokens, max_batch, requests, queued)
//   POST /v1/completions        prompt (string, list of strings, token ids), n, max_tokens,
//                               temperature, top_p, stop, seed, logprobs (0-20), stream
//   POST /v1/chat/completions   messages through the chat template, n, max_tokens (or
//                               max_completion_tokens), temperature, top_p, stop, seed,
//                               logprobs + top_logprobs, stream (+ stream_options.include_usage)
// Streams are server-sent events ("data: {chunk}\n\n" ... "data: [DONE]\n\n"). Errors are
// OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a bad request, 401
// without the API key, 404 for an unknown route, 413 for a body over the limit, 429 when the
// queue is full. Loopback only unless --host says otherwise. With a RAG index (--rag), chats are
// answered from retrieved chunks (apps/rag.h).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "apps/rag.h"
#include "model/model.h"
#include "serve/engine.h"

namespace rlhf {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int64_t port = 8080;               // 0: any free port
  std::string api_key;               // when set, requests need "Authorization: Bearer KEY"
  std::string model_name;            // the id in /v1/models and replies (default: the model's file name)
  std::string chat_template;         // a built-in name; empty: the model's own when recognised, else chatml
  int64_t max_tokens_limit = 0;      // the most tokens one choice may ask for; 0: the context size
  int max_n = 16;                    // choices per request at most (also capped by the engine's max_rows)
  size_t max_body = 1 << 20;         // request body bytes (413 past this)
  EngineOptions engine;
  // Retrieval for chat: with an index, the last user message is the question; the k chunks
  // retrieved for it and the question fill `rag.prompt_template`, which replaces the message.
  // Replies carry "retrieved" (id, doc, score, text) and, when whole, each choice's "citations".
  std::string rag_index;
  RagOptions rag;
};

class OpenAiServer {
 public:
  // `model_path` is what the model was loaded from: the chat template its files carry
  // (formats/model_metadata.h) is used when no template is given and it is one we render.
  // `engine_thread` false: the engine decodes only inside run_engine(), on the caller's thread.
  OpenAiServer(LoadedModel& model, const std::string& model_path, const ServeOptions& options,
               bool engine_thread = true);
  ~OpenAiServer();
  int start();  // binds and serves on a thread; returns the port (Error when it cannot bind)
  void stop();  // stops accepting, ends open streams, joins
  // Decodes on this thread until `should_stop` returns true (an engine made without a thread).
  void run_engine(const std::function<bool()>& should_stop);
  const std::string& chat_template() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs a server until `should_stop` returns true (polled), printing its address on stderr.
void serve_openai(LoadedModel& model, const std::string& model_path, const ServeOptions& options,
                  const std::function<bool()>& should_stop);

}  // namespace rlhf
