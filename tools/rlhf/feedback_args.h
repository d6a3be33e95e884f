// The command-line options every command with a feedback model shares (rlaif label,
// rlaif agreement, redteam eval): which model or endpoint, how it answers, the endpoint's
// limits.
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "apps/llm.h"
#include "feedback/ai_feedback.h"
#include "train/config_fields.h"  // detail::data_path_flag: "data:..." paths

namespace rlhf::cli {

struct FeedbackArgs {
  std::string model;  // path or http(s) URL
  std::string device = "cpu", dtype = "float32";
  FeedbackOptions feedback;
  EndpointOptions endpoint;
};

// --NAME (the model), --feedback-method, --votes, --cot, --cot-max-tokens, --api-key, --timeout,
// --retries, --max-requests, --device, --dtype.
inline void add_feedback_options(CLI::App& cmd, FeedbackArgs& a, const std::string& name = "--feedback-model",
                                 bool required = true) {
  auto* opt = cmd.add_option(name, a.model,
                             "Feedback model: a model path (HF folder, .gguf, llama2.c .bin) or an OpenAI-compatible "
                             "endpoint URL (rlhf serve, llama.cpp server, vLLM, Ollama)")
                 ->transform(detail::data_path_flag());
  if (required) opt->required();
  cmd.add_option("--feedback-method", a.feedback.method,
                 "auto (option log-probabilities, else sampled votes), logprobs, or votes")
      ->capture_default_str();
  cmd.add_option("--votes", a.feedback.votes, "Samples per question when voting")->capture_default_str();
  cmd.add_flag("--cot", a.feedback.chain_of_thought,
               "Chain of thought before answering (probabilities then clamped to 40-60%)");
  cmd.add_option("--cot-max-tokens", a.feedback.cot_max_tokens, "Length of the reasoning")->capture_default_str();
  cmd.add_option("--api-key", a.endpoint.api_key, "Endpoint API key (default: $OPENAI_API_KEY)");
  cmd.add_option("--timeout", a.endpoint.timeout_seconds, "Seconds per endpoint request")->capture_default_str();
  cmd.add_option("--retries", a.endpoint.retries, "Retries of a failed endpoint request (5xx, 429, no reply)")
      ->capture_default_str();
  cmd.add_option("--max-requests", a.endpoint.max_requests, "Endpoint requests at most (0: no limit)")
      ->capture_default_str();
  cmd.add_option("--device", a.device, "cpu, cuda or cuda:N (local models)")->capture_default_str();
  cmd.add_option("--dtype", a.dtype, "float32 or bfloat16 (local models)")->capture_default_str();
}

inline std::shared_ptr<FeedbackModel> open_feedback_model(const FeedbackArgs& a, uint64_t seed) {
  FeedbackOptions o = a.feedback;
  o.seed = seed;
  return std::make_shared<FeedbackModel>(open_llm(a.model, LoadOptions{a.device, a.dtype, {}}, a.endpoint), o);
}

}  // namespace rlhf::cli
