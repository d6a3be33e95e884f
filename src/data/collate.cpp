// Tokenization of prompt/completion examples, padding into batches, and SFT packing.
#include "data/collate.h"

#include "core/error.h"

namespace rlhf {
namespace {

bool is_completion_token(const TokenizedExample& ex, size_t t) {
  return ex.loss_mask.empty() ? static_cast<int64_t>(t) >= ex.prompt_length : ex.loss_mask[t] != 0;
}

}  // namespace

TokenizedExample tokenize_example(const Tokenizer& tok, const std::string& prompt, const std::string& completion,
                                  int64_t max_length, bool add_eos) {
  std::vector<int32_t> p = encode_prompt(tok, prompt);
  const int32_t bos = tok.bos_id();
  std::vector<int32_t> c = tok.encode(completion, {.add_bos = false, .parse_special = true});
  if (add_eos) {
    check(tok.eos_id() >= 0, "tokenize_example: the tokenizer has no EOS token to end completions with");
    c.push_back(tok.eos_id());
  }

  if (max_length > 0 && static_cast<int64_t>(p.size() + c.size()) > max_length) {
    // Left-truncate the prompt (its end is the context the completion needs), keeping BOS.
    const size_t keep_first = (!p.empty() && bos >= 0 && p[0] == bos) ? 1 : 0;
    const size_t excess = p.size() + c.size() - static_cast<size_t>(max_length);
    const size_t cut = std::min(excess, p.size() - keep_first);
    p.erase(p.begin() + keep_first, p.begin() + keep_first + cut);
    // Then right-truncate the completion (p is at most BOS here, so it fits); a cut
    // completion loses its EOS, as it should.
    if (static_cast<int64_t>(p.size() + c.size()) > max_length) c.resize(static_cast<size_t>(max_length) - p.size());
  }

  TokenizedExample ex;
  ex.prompt_length = static_cast<int64_t>(p.size());
  ex.ids = std::move(p);
  ex.ids.insert(ex.ids.end(), c.begin(), c.end());
  return ex;
}

TokenBatch collate(const std::vector<TokenizedExample>& examples, int32_t pad_id) {
  check(!examples.empty(), "collate: no examples");
  check(pad_id >= 0, "collate: pad id " + std::to_string(pad_id) + " is negative (use EOS when the tokenizer has no pad)");
  const int64_t B = static_cast<int64_t>(examples.size());
  int64_t T = 0;
  for (const auto& ex : examples) T = std::max<int64_t>(T, static_cast<int64_t>(ex.ids.size()));

  // Filled on the CPU through accessors, then wrapped as tensors in one go.
  TokenBatch batch;
  batch.input_ids = torch::full({B, T}, static_cast<int64_t>(pad_id), torch::kInt64);
  batch.attention_mask = torch::zeros({B, T}, torch::kInt64);
  batch.loss_mask = torch::zeros({B, T}, torch::kFloat32);
  batch.lengths = torch::zeros({B}, torch::kInt64);
  auto ids = batch.input_ids.accessor<int64_t, 2>();
  auto attn = batch.attention_mask.accessor<int64_t, 2>();
  auto loss = batch.loss_mask.accessor<float, 2>();
  auto len = batch.lengths.accessor<int64_t, 1>();
  for (int64_t b = 0; b < B; ++b) {
    const TokenizedExample& ex = examples[b];
    check(ex.loss_mask.empty() || ex.loss_mask.size() == ex.ids.size(),
          "collate: example " + std::to_string(b) + " has a loss_mask of a different length than its ids");
    check(ex.prompt_length >= 0 && ex.prompt_length <= static_cast<int64_t>(ex.ids.size()),
          "collate: example " + std::to_string(b) + " has prompt_length " + std::to_string(ex.prompt_length) +
              " outside 0.." + std::to_string(ex.ids.size()));
    len[b] = static_cast<int64_t>(ex.ids.size());
    for (size_t t = 0; t < ex.ids.size(); ++t) {
      ids[b][t] = ex.ids[t];
      attn[b][t] = 1;
      loss[b][t] = is_completion_token(ex, t) ? 1.0f : 0.0f;
    }
  }
  return batch;
}

std::optional<SharedPromptBatch> collate_shared_prompt(const std::vector<TokenizedExample>& chosen,
                                                       const std::vector<TokenizedExample>& rejected, int32_t pad_id) {
  check(!chosen.empty() && chosen.size() == rejected.size(), "collate_shared_prompt: need as many chosen as rejected, at least one");
  check(pad_id >= 0, "collate_shared_prompt: pad id " + std::to_string(pad_id) + " is negative");
  const int64_t n = static_cast<int64_t>(chosen.size());
  int64_t L = 0;
  for (int64_t k = 0; k < n; ++k) {
    const auto &c = chosen[k], &r = rejected[k];
    const int64_t p = c.prompt_length;
    if (p < 1 || r.prompt_length != p || !c.loss_mask.empty() || !r.loss_mask.empty() ||
        p > static_cast<int64_t>(c.ids.size()) || p > static_cast<int64_t>(r.ids.size()) ||
        !std::equal(c.ids.begin(), c.ids.begin() + p, r.ids.begin()))
      return std::nullopt;
    L = std::max<int64_t>(L, static_cast<int64_t>(c.ids.size() + r.ids.size()) - p);
  }
  SharedPromptBatch out;
  out.input_ids = torch::full({n, L}, static_cast<int64_t>(pad_id), torch::kInt64);
  out.positions = torch::zeros({n, L}, torch::kInt64);
  out.attention_mask = torch::zeros({n, L}, torch::kInt64);
  out.skip_begin = torch::zeros({n}, torch::kInt64);
  out.skip_end = torch::zeros({n}, torch::kInt64);
  out.last = torch::zeros({2 * n}, torch::kInt64);
  auto ids = out.input_ids.accessor<int64_t, 2>(), pos = out.positions.accessor<int64_t, 2>();
  auto attn = out.attention_mask.accessor<int64_t, 2>();
  auto sb = out.skip_begin.accessor<int64_t, 1>(), se = out.skip_end.accessor<int64_t, 1>();
  auto last = out.last.accessor<int64_t, 1>();
  std::vector<int64_t> predictor, target, sequence;
  for (int64_t k = 0; k < n; ++k) {
    const auto &c = chosen[k], &r = rejected[k];
    const int64_t p = c.prompt_length, nc = static_cast<int64_t>(c.ids.size()) - p, nr = static_cast<int64_t>(r.ids.size()) - p;
    for (int64_t t = 0; t < p + nc; ++t) ids[k][t] = c.ids[t], pos[k][t] = t, attn[k][t] = 1;
    for (int64_t t = 0; t < nr; ++t) ids[k][p + nc + t] = r.ids[p + t], pos[k][p + nc + t] = p + t, attn[k][p + nc + t] = 1;
    if (nc > 0 && nr > 0) sb[k] = p, se[k] = p + nc;  // the rejected tokens do not see the chosen ones
    last[k] = k * L + p + nc - 1;
    last[n + k] = k * L + (nr > 0 ? p + nc + nr - 1 : p - 1);
    for (int64_t t = 0; t < nc; ++t) {  // chosen token p + t, predicted at p + t - 1
      predictor.push_back(k * L + p + t - 1), target.push_back(c.ids[p + t]), sequence.push_back(k);
    }
    for (int64_t t = 0; t < nr; ++t) {  // rejected token p + t sits at p + nc + t, predicted by the previous one
      predictor.push_back(k * L + (t == 0 ? p - 1 : p + nc + t - 1)), target.push_back(r.ids[p + t]), sequence.push_back(n + k);
    }
  }
  out.predictor = torch::tensor(predictor, torch::kInt64);
  out.target = torch::tensor(target, torch::kInt64);
  out.sequence = torch::tensor(sequence, torch::kInt64);
  return out;
}

std::vector<TokenizedExample> pack_examples(const std::vector<TokenizedExample>& examples, int64_t seq_len) {
  check(seq_len > 0, "pack_examples: seq_len must be positive, got " + std::to_string(seq_len));
  std::vector<TokenizedExample> rows;
  TokenizedExample row;
  auto finish_row = [&] {
    // prompt_length stays meaningful: the masked tokens the row starts with.
    row.prompt_length = std::find(row.loss_mask.begin(), row.loss_mask.end(), 1) - row.loss_mask.begin();
    rows.push_back(std::move(row));
    row = {};
  };
  for (const TokenizedExample& ex : examples) {
    for (size_t t = 0; t < ex.ids.size(); ++t) {
      row.ids.push_back(ex.ids[t]);
      row.loss_mask.push_back(is_completion_token(ex, t) ? 1 : 0);
      if (static_cast<int64_t>(row.ids.size()) == seq_len) finish_row();
    }
  }
  if (!row.ids.empty()) finish_row();
  return rows;
}

}  // namespace rlhf
