// rlhf serve: the OpenAI-compatible server (serve/openai_server.h).
#include <atomic>
#include <csignal>

#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "model/model.h"
#include "serve/openai_server.h"

namespace rlhf::cli {

namespace {
std::atomic<bool> g_serve_stop{false};
}

void add_serve(CLI::App& app) {
  struct Args {
    ServeOptions opt;
    std::string model, tokenizer, device = "cpu", dtype = "float32", weights = "auto";
    double max_body_mb = 1;
    std::string rag_template;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, /v1/models) "
                                          "with continuous batching");
  cmd->add_option("--model,-m", a->model, "Model: HF folder, .gguf, or llama2.c .bin")->required();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer file/folder (overrides the model's)");
  cmd->add_option("--host", a->opt.host, "Address to listen on (loopback by default)")->capture_default_str();
  cmd->add_option("--port", a->opt.port, "Port (0: any free one)")->capture_default_str();
  cmd->add_option("--api-key", a->opt.api_key, "Require 'Authorization: Bearer KEY' on every /v1 request");
  cmd->add_option("--model-name", a->opt.model_name, "The model id clients see (default: the model's file name)");
  cmd->add_option("--chat-template", a->opt.chat_template,
                  "Chat template: llama2, llama3, chatml or hh (default: the model's own when recognised, else chatml)");
  cmd->add_option("--parallel", a->opt.engine.max_rows, "Sequences decoded together at most (continuous batching)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-queue", a->opt.engine.max_queue, "Requests waiting to join the batch at most (429 past this)")
      ->capture_default_str();
  cmd->add_option("--max-tokens", a->opt.max_tokens_limit, "The most tokens a request may generate per choice (0: the context size)")
      ->capture_default_str();
  cmd->add_option("--max-n", a->opt.max_n, "Choices per request at most")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--max-body-mb", a->max_body_mb, "Request body size limit, MiB (413 past this)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--rag", a->opt.rag_index, "RAG index (rlhf rag index): answer chats from the chunks retrieved for "
                                             "the last user message");
  cmd->add_option("--rag-k", a->opt.rag.k, "Chunks retrieved per question")->capture_default_str();
  cmd->add_flag("--rag-dense", a->opt.rag.dense, "Re-rank with the index's embeddings (an index built with --embed-model)");
  cmd->add_option("--rag-template", a->rag_template, "Prompt template file with {context} and {question} "
                                                     "(default: a one-shot template for instruction-following models)");
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "float32 or bfloat16")->capture_default_str();
  cmd->add_option("--weights", a->weights, kWeightsHelp)->capture_default_str();
  cmd->callback([a] {
    a->opt.max_body = static_cast<size_t>(a->max_body_mb * (1 << 20));
    if (!a->rag_template.empty()) a->opt.rag.prompt_template = read_file(a->rag_template);
    auto lm = load_model(a->model, {a->device, a->dtype, a->tokenizer, a->weights});
    std::signal(SIGINT, [](int) { g_serve_stop = true; });
    std::signal(SIGTERM, [](int) { g_serve_stop = true; });
    std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up mid-stream is the write's error, not the process's end
    serve_openai(lm, a->model, a->opt, [] { return g_serve_stop.load(); });
  });
}

}  // namespace rlhf::cli
