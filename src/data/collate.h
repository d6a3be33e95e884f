// From text examples to padded token tensors. Training batches are right-padded with the
// tokenizer's pad id (EOS when it has none); positions are then simply 0..T-1 and the last
// real token of row b sits at index lengths[b] - 1.
#pragma once
#include <torch/torch.h>

#include <optional>
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

// Preference pairs with each prompt computed once (for reward models and DPO, where most
// tokens are prompt). Row k holds pair k's prompt, its chosen completion, then its rejected
// one; the rejected tokens take the positions right after the prompt, as in a row of their
// own, and do not see the chosen ones (the span [skip_begin, skip_end), a KeySkip of
// model/transformer.h). Every completion token then gets the hidden state it would get in
// its own row of `collate`: the same scores and log-probabilities, with a third fewer
// tokens for a prompt as long as both completions together.
struct SharedPromptBatch {
  torch::Tensor input_ids, positions, attention_mask;  // (n, L) int64, right-padded
  torch::Tensor skip_begin, skip_end;                  // (n) int64: the chosen completion
  // (2n) int64: row * L + index of the last token of chosen k (at k) and rejected k (at
  // n + k), where a reward model reads its score (the prompt's last token for an empty one).
  torch::Tensor last;
  // The completion tokens of both sides, flattened (N) int64: the row * L + index of the
  // hidden state that predicts each (the previous token of its own sequence), the token, and
  // its sequence (k: chosen of pair k, n + k: rejected).
  torch::Tensor predictor, target, sequence;
};

// Empty (use `collate`) when some pair's two examples do not start with the same prompt
// tokens (e.g. cut differently to fit max_length), a prompt is empty, or an example carries
// its own loss mask. chosen[k] and rejected[k] form pair k.
std::optional<SharedPromptBatch> collate_shared_prompt(const std::vector<TokenizedExample>& chosen,
                                                       const std::vector<TokenizedExample>& rejected, int32_t pad_id);

// Packs examples end to end into rows of `seq_len` tokens (SFT packing, TRL's "wrapped"
// strategy: an example may continue on the next row; only the last row may be shorter).
// Each row's loss_mask keeps every example's prompt masked. Attention crosses example
// boundaries (as TRL's packing does); the EOS that ends each example separates them.
std::vector<TokenizedExample> pack_examples(const std::vector<TokenizedExample>& examples, int64_t seq_len);

}  // namespace rlhf
