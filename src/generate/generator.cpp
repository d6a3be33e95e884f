#include "generate/generator.h"

#include <ATen/Parallel.h>  // at::parallel_for

#include <numeric>

#include "core/error.h"

namespace rlhf {

namespace {

// One sequence's state while it is being decoded.
struct Slot {
  size_t prompt_index;
  std::vector<int32_t> context;  // prompt + generated, for penalties and decoding
  std::mt19937_64 rng;
  Generation out;
  bool done = false;
};

void generate_batch(Transformer& model, const Tokenizer& tok, std::vector<Slot>& slots,
                    const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& opt,
                    const TokenCallback& on_token) {
  c10::InferenceMode inference;  // no autograd bookkeeping at all: cheaper than NoGradGuard
  const Sampler sampler(opt.sampling);
  const auto dev = model->device();
  const auto long_opts = torch::TensorOptions().dtype(torch::kLong);
  std::vector<int32_t> eos = opt.eos_ids;
  if (eos.empty() && tok.eos_id() >= 0) eos.push_back(tok.eos_id());
  const int32_t pad = tok.pad_id() >= 0 ? tok.pad_id() : 0;  // any id: padding is masked

  // 1. Left-pad the prompts into (B, P) with a mask; positions start at each first real token.
  const int64_t B = slots.size();
  int64_t P = 0;
  for (auto& s : slots) P = std::max<int64_t>(P, prompts[s.prompt_index].size());
  const int64_t capacity = P + opt.max_new_tokens;
  check(capacity <= model->config().max_position_embeddings || model->config().positions == PositionType::Rotary,
        "prompt + max_new_tokens = " + std::to_string(capacity) + " exceeds the model's " +
            std::to_string(model->config().max_position_embeddings) + " positions");
  auto tokens = torch::full({B, P}, pad, long_opts);
  auto mask = torch::zeros({B, capacity}, long_opts);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[slots[b].prompt_index];
    const int64_t n = p.size();
    for (int64_t i = 0; i < n; ++i) tokens[b][P - n + i] = p[i];
    mask[b].narrow(0, P - n, n).fill_(1);
  }
  mask = mask.to(dev);
  auto positions = positions_from_mask(mask.narrow(1, 0, P));
  auto cache = KVCache::allocate(model->config(), B, capacity,
                                 torch::TensorOptions().dtype(model->dtype()).device(dev));

  // 2. Prefill, then decode one token per step for the sequences still running.
  std::vector<int64_t> rows(B);  // batch row -> slot
  std::iota(rows.begin(), rows.end(), 0);
  // The LM head runs on the last prompt position only: at a 150K vocabulary, logits for the
  // whole prompt would cost more than the prefill itself.
  auto logits = model->logits(model->hidden_states(tokens.to(dev), positions, mask.narrow(1, 0, P), &cache).select(1, -1));
  auto last_pos = positions.select(1, -1);  // (B)
  for (int64_t step = 0; step < opt.max_new_tokens && !rows.empty(); ++step) {
    auto cpu_logits = logits.to(torch::kCPU).contiguous();  // (B', V) float32
    const int64_t V = cpu_logits.size(1);
    std::vector<int64_t> next(rows.size());
    // Rows sample independently (each has its own generator), so they run in parallel.
    at::parallel_for(0, rows.size(), 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        Slot& s = slots[rows[r]];
        std::span<const float> row(cpu_logits.data_ptr<float>() + r * V, V);
        const Draw d = sampler.sample_with_logprob(row, s.context, s.rng);
        next[r] = d.id;
        s.out.tokens.push_back(d.id);
        s.out.logprobs.push_back(d.logprob);
        s.context.push_back(d.id);
      }
    });
    for (size_t r = 0; r < rows.size(); ++r) {
      Slot& s = slots[rows[r]];
      const int32_t id = static_cast<int32_t>(next[r]);
      if (on_token) on_token(s.prompt_index, id);
      if (opt.stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) {
        s.done = true;
        s.out.finish_reason = "eos";
      } else if (!opt.stop_strings.empty()) {
        auto text = continuation_text(tok, prompts[s.prompt_index], s.out.tokens);
        for (const auto& stop : opt.stop_strings)
          if (text.find(stop) != std::string::npos) {
            s.done = true;
            s.out.finish_reason = "stop";
          }
      }
    }
    if (step + 1 == opt.max_new_tokens) break;

    // Drop finished rows from the batch (and the cache) before the next step.
    std::vector<int64_t> keep;
    for (size_t r = 0; r < rows.size(); ++r)
      if (!slots[rows[r]].done) keep.push_back(r);
    auto next_t = torch::tensor(next, long_opts).to(dev);
    if (keep.size() != rows.size()) {
      if (keep.empty()) break;
      auto idx = torch::tensor(keep, long_opts).to(dev);
      cache.select_rows(idx);
      mask = mask.index_select(0, idx);
      last_pos = last_pos.index_select(0, idx);
      next_t = next_t.index_select(0, idx);
      std::vector<int64_t> kept_rows;
      for (auto r : keep) kept_rows.push_back(rows[r]);
      rows.swap(kept_rows);
    }
    mask.select(1, cache.length).fill_(1);
    last_pos = last_pos + 1;
    logits = model->forward(next_t.unsqueeze(1), last_pos.unsqueeze(1),
                            mask.narrow(1, 0, cache.length + 1), &cache).select(1, -1);
  }

  // 3. Texts, cut before the first stop string.
  for (auto& s : slots) {
    if (s.out.finish_reason.empty()) s.out.finish_reason = "length";
    s.out.text = continuation_text(tok, prompts[s.prompt_index], s.out.tokens);
    if (s.out.finish_reason == "eos") {
      std::vector<int32_t> body(s.out.tokens.begin(), s.out.tokens.end() - 1);
      s.out.text = continuation_text(tok, prompts[s.prompt_index], body);
    }
    for (const auto& stop : opt.stop_strings) {
      auto at = s.out.text.find(stop);
      if (at != std::string::npos) s.out.text.resize(at);
    }
  }
}

}  // namespace

std::string continuation_text(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                              const std::vector<int32_t>& generated) {
  std::vector<int32_t> all(prompt);
  all.insert(all.end(), generated.begin(), generated.end());
  std::string full = tok.decode(all), head = tok.decode(prompt);
  return full.compare(0, head.size(), head) == 0 ? full.substr(head.size()) : tok.decode(generated);
}

std::vector<Generation> generate(Transformer& model, const Tokenizer& tokenizer,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& options, const TokenCallback& on_token) {
  check(options.max_new_tokens >= 0, "max_new_tokens must be >= 0");
  check(options.max_batch > 0, "max_batch must be > 0");
  for (const auto& stop : options.stop_strings)
    check(!stop.empty(), "a stop string must not be empty (every text contains \"\": generation would stop "
                         "after the first token)");
  for (size_t i = 0; i < prompts.size(); ++i) {
    check(!prompts[i].empty(), "prompt " + std::to_string(i) + " is empty (no tokens, not even BOS)");
    for (int32_t id : prompts[i])
      check(id >= 0 && id < model->config().vocab_size,
            "prompt " + std::to_string(i) + " has token id " + std::to_string(id) + " outside the vocabulary");
  }
  std::vector<Generation> results(prompts.size());
  if (options.max_new_tokens == 0) {
    for (auto& r : results) r.finish_reason = "length";
    return results;
  }
  for (size_t start = 0; start < prompts.size(); start += options.max_batch) {
    std::vector<Slot> slots;
    for (size_t i = start; i < std::min(prompts.size(), start + options.max_batch); ++i)
      slots.push_back(Slot{i, prompts[i], sequence_rng(options.seed, options.first_sequence + i), {}, false});
    generate_batch(model, tokenizer, slots, prompts, options, on_token);
    for (auto& s : slots) results[s.prompt_index] = std::move(s.out);
  }
  return results;
}

}  // namespace rlhf
