// From text examples to padded token tensors. Training batches are right-padded with the
// tokenizer's pad id (EOS when it has none); positions are then simply 0..T-1 and the last
// real token of row b sits at index lengths[b] - 1.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "data/datasets.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {

struct TokenizedExample {
  std::vector<int32_t> ids;        // prompt + completion (+ EOS)
  int64_t prompt_length = 0;       // tokens that belong to the prompt (loss ignores them)
  // Per-token loss mask (1 = completion token) for rows that are not one prompt followed by
  // one completion (packed rows); empty means "t >= prompt_length".
  std::vector<uint8_t> loss_mask;
};

// prompt tokens (with BOS by the tokenizer's rule) then completion tokens, then EOS when
// `add_eos`; cut to `max_length` (<= 0: no limit) keeping the prompt's end and the
// completion's start (truncation from the left of the prompt, then from the right of the
// completion; a leading BOS is kept).
// Prompt and completion are encoded separately, as TRL does, so the boundary is exact; with
// a SentencePiece tokenizer each one gets its own dummy-prefix space ("▁"). Special-token
// strings are parsed (chat templates write them as text), and no BOS is added when the
// prompt already starts with one (the llama2 template writes "<s>").
TokenizedExample tokenize_example(const Tokenizer& tok, const std::string& prompt, const std::string& completion,
                                  int64_t max_length, bool add_eos = true);

struct TokenBatch {
  torch::Tensor input_ids;       // (B, T) int64, right-padded
  torch::Tensor attention_mask;  // (B, T) int64, 1 = real token
  torch::Tensor loss_mask;       // (B, T) float32, 1 where the token is a completion token
  torch::Tensor lengths;         // (B) int64, real tokens per row
};

// Pads examples into one batch. loss_mask[b][t] = 1 for completion tokens (t >= prompt_length,
// or the example's own loss_mask); the token at t is predicted by the logits at t - 1, so the
// losses shift. Error when `examples` is empty or pad_id < 0.
TokenBatch collate(const std::vector<TokenizedExample>& examples, int32_t pad_id);

// Packs examples end to end into rows of `seq_len` tokens (SFT packing, TRL's "wrapped"
// strategy: an example may continue on the next row; only the last row may be shorter).
// Each row's loss_mask keeps every example's prompt masked. Attention crosses example
// boundaries (as TRL's packing does); the EOS that ends each example separates them.
std::vector<TokenizedExample> pack_examples(const std::vector<TokenizedExample>& examples, int64_t seq_len);

}  // namespace rlhf
