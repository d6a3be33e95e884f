// Batched generation with a KV cache: prompts are left-padded into one batch, decoded step
// by step, and finished sequences are dropped from the batch as they end. Returns the
// generated ids and, per token, the policy's log-probability (what PPO needs).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "generate/sampler.h"
#include "model/transformer.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {

struct GenerateOptions {
  int64_t max_new_tokens = 256;
  SamplingParams sampling;
  uint64_t seed = 0;                     // sequence i draws from sequence_rng(seed, first_sequence + i)
  uint64_t first_sequence = 0;           // index of prompts[0] in a larger batch split over processes
  std::vector<int32_t> eos_ids;          // empty: the tokenizer's EOS
  bool stop_at_eos = true;
  std::vector<std::string> stop_strings; // generation stops once the text contains one; none empty
  int64_t max_batch = 64;                // prompts beyond this are run in further batches
};

struct Generation {
  std::vector<int32_t> tokens;    // generated ids (the EOS included when it ended the text)
  std::vector<float> logprobs;    // log pi(token | context) at the sampling temperature
  std::string text;               // decoded continuation, cut before a stop string
  std::string finish_reason;      // "eos", "stop" or "length"
};

// The text of `generated` as it continues `prompt`: decoded together with the prompt, so
// rules that depend on the position (SentencePiece's leading-space strip) stay right.
std::string continuation_text(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                              const std::vector<int32_t>& generated);

// Called after each step for each active sequence: (prompt index, new token).
using TokenCallback = std::function<void(size_t, int32_t)>;

std::vector<Generation> generate(Transformer& model, const Tokenizer& tokenizer,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& options, const TokenCallback& on_token = {});

}  // namespace rlhf
