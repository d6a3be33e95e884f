#include "serve/engine.h"

#include <ATen/Parallel.h>  // at::parallel_for

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "core/error.h"
#include "core/utf8.h"
#include "generate/generator.h"
#include "kernels/cpu_kernels.h"

namespace rlhf {

namespace {

// Columns added past what is needed when the cache grows, so it grows every 64 steps, not
// every step.
constexpr int64_t kHeadroom = 64;

struct Pick {
  int32_t id = -1;
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

}  // namespace

struct Engine::Row {
  std::shared_ptr<EngineRequest> req;
  std::shared_ptr<const Sampler> sampler;
  int choice = 0;
  std::vector<int32_t> generated;
  std::vector<int32_t> context;  // prompt + generated (repetition penalty)
  std::mt19937_64 rng;
  size_t emitted = 0;            // bytes of text sent
  int32_t pending = 0;           // sampled, not yet run through the model
  int64_t pos = 0;               // position of `pending`
  int64_t start = 0;             // the row's first column in the cache
};

size_t stable_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t n = text.size();
  // A character still missing bytes at the end waits for them.
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const size_t i = n - back;
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    if (utf8::step(text, i).step == utf8::Step::Incomplete) n = i;
    break;
  }
  // A tail that is the start of a stop string waits until it is known not to be one.
  size_t keep = n;
  for (const auto& stop : stops)
    for (size_t k = std::min(stop.size() - 1, n); k > 0; --k)
      if (text.compare(n - k, k, stop, 0, k) == 0) {
        keep = std::min(keep, n - k);
        break;
      }
  return keep;
}

Engine::Engine(Transformer model, const Tokenizer& tok, const EngineOptions& options, bool own_thread)
    : model_(std::move(model)), tok_(tok), opt_(options) {
  check(opt_.max_rows >= 1, "engine: max_rows must be >= 1");
  if (own_thread) thread_ = std::thread([this] { run({}); });
}

void Engine::run_here(const std::function<bool()>& should_stop) {
  check(!thread_.joinable(), "engine: run_here() on an engine that has its own thread");
  run(should_stop);
}

Engine::~Engine() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Engine::submit(std::shared_ptr<EngineRequest> r) {
  check(!r->prompt.empty(), "the prompt is empty (no tokens, not even BOS)");
  for (int32_t id : r->prompt)
    check(id >= 0 && id < model_->config().vocab_size, "the prompt has token id " + std::to_string(id) + " outside the vocabulary");
  check(r->n >= 1 && r->n <= opt_.max_rows, "n must be between 1 and " + std::to_string(opt_.max_rows));
  check(r->max_tokens >= 1, "max_tokens must be >= 1");
  for (const auto& s : r->stop) check(!s.empty(), "a stop string must not be empty");
  {
    std::lock_guard lock(mu_);
    if (queue_.size() >= opt_.max_queue) return false;
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
  return true;
}

size_t Engine::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

EngineStats Engine::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void Engine::run(const std::function<bool()>& should_stop) {
  c10::InferenceMode inference;  // per thread: this one runs every forward
  // Denormal flushing is per thread (MXCSR), and this thread has its own OpenMP team: set it
  // here as the CLI's main() does for its own.
  flush_denormals_on_cpu_threads();
  for (;;) {
    std::vector<std::shared_ptr<EngineRequest>> joining;
    {
      std::unique_lock lock(mu_);
      auto ready = [&] { return stopping_ || !queue_.empty() || !rows_.empty(); };
      if (should_stop) {
        while (!ready() && !should_stop()) cv_.wait_for(lock, std::chrono::milliseconds(50));
        if (should_stop()) return;
      } else {
        cv_.wait(lock, ready);
      }
      if (stopping_) return;
      int64_t used = rows_.size();
      while (!queue_.empty() && used + queue_.front()->n <= opt_.max_rows) {
        used += queue_.front()->n;
        joining.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    for (auto& r : joining) {
      if (r->cancelled) {
        std::lock_guard lock(mu_);
        ++stats_.requests;
        continue;
      }
      try {
        admit(r);
      } catch (const std::exception& e) {  // e.g. out of memory: this request fails, the others go on
        for (int j = 0; j < r->n; ++j) r->on_event({.index = j, .delta = e.what(), .finish_reason = "error"});
        std::lock_guard lock(mu_);
        ++stats_.requests;
      }
    }
    try {
      step();
    } catch (const std::exception& e) {  // the batch cannot go on: every running choice fails
      for (auto& row : rows_)
        if (!row->req->cancelled) row->req->on_event({.index = row->choice, .delta = e.what(), .finish_reason = "error"});
      rows_.clear();
      cache_ = KVCache();
    }
  }
}

// The sampled token, and its log-probabilities when the request wants them. Touches only the
// row's generator: rows pick in parallel.
static Pick pick(const Sampler& sampler, std::span<const int32_t> context, std::mt19937_64& rng, int top_logprobs,
                 const float* logits, int64_t V) {
  Pick p;
  std::span<const float> row(logits, V);
  p.id = sampler.sample(row, context, rng);
  if (top_logprobs < 0) return p;
  const float mx = *std::max_element(row.begin(), row.end());
  double sum = 0;
  for (float x : row) sum += std::exp(static_cast<double>(x - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  p.logprob = row[p.id] - lse;
  const int64_t k = std::min<int64_t>(top_logprobs, V);
  if (k > 0) {
    std::vector<int32_t> ids(V);
    for (int64_t i = 0; i < V; ++i) ids[i] = static_cast<int32_t>(i);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (int64_t i = 0; i < k; ++i) p.top.push_back({ids[i], row[ids[i]] - lse});
  }
  return p;
}

// Applies a picked token to the row: text, stop checks, the event. True when the row is done.
static bool commit(const Tokenizer& tok, EngineRequest& req, std::vector<int32_t>& generated,
                   std::vector<int32_t>& context, size_t& emitted, int choice, Pick&& p) {
  ChoiceEvent ev{.index = choice, .token = p.id, .logprob = p.logprob, .top = std::move(p.top)};
  const bool stop_token = std::find(req.stop_ids.begin(), req.stop_ids.end(), p.id) != req.stop_ids.end();
  if (!stop_token) {
    generated.push_back(p.id);
    context.push_back(p.id);
  }
  std::string text = continuation_text(tok, req.prompt, generated);
  if (stop_token) {
    ev.finish_reason = "stop";
  } else {
    size_t cut = std::string::npos;
    for (const auto& s : req.stop) cut = std::min(cut, text.find(s));
    if (cut != std::string::npos) {
      text.resize(cut);
      ev.finish_reason = "stop";
    } else if (static_cast<int64_t>(generated.size()) >= req.max_tokens) {
      ev.finish_reason = "length";
    }
  }
  const bool done = !ev.finish_reason.empty();
  const size_t show = done ? text.size() : stable_prefix(text, req.stop);
  if (show > emitted) {
    ev.delta = text.substr(emitted, show - emitted);
    emitted = show;
  }
  if (done) ev.completion_tokens = static_cast<int64_t>(generated.size()) + (stop_token ? 1 : 0);
  if (!req.cancelled) req.on_event(ev);
  return done;
}

void Engine::admit(const std::shared_ptr<EngineRequest>& req) {
  const auto& cfg = model_->config();
  const auto dev = model_->device();
  const int64_t P = req->prompt.size();
  // The prompt alone: exactly what a batch of one computes.
  auto cache = KVCache::allocate(cfg, 1, P, torch::TensorOptions().dtype(model_->dtype()).device(dev));
  std::vector<int64_t> ids(req->prompt.begin(), req->prompt.end());
  auto tokens = torch::tensor(ids, torch::kLong).view({1, P}).to(dev);
  auto logits = model_->logits(model_->hidden_states(tokens, {}, {}, &cache).select(1, -1))  // the last position only
                    .to(torch::kCPU).contiguous();  // (1, V)
  const int64_t V = logits.size(1);

  auto sampler = std::make_shared<const Sampler>(req->sampling);
  std::vector<std::unique_ptr<Row>> joining;
  int64_t finished = 0;
  for (int j = 0; j < req->n; ++j) {
    auto row = std::make_unique<Row>();
    row->req = req;
    row->sampler = sampler;
    row->choice = j;
    row->context = req->prompt;
    row->rng = sequence_rng(req->seed, j);
    auto p = pick(*sampler, row->context, row->rng, req->top_logprobs, logits.data_ptr<float>(), V);
    if (commit(tok_, *req, row->generated, row->context, row->emitted, j, std::move(p))) {
      ++finished;
      continue;
    }
    row->pending = row->generated.back();
    row->pos = P;
    joining.push_back(std::move(row));
  }
  {
    std::lock_guard lock(mu_);
    stats_.tokens += req->n;
    if (joining.empty()) ++stats_.requests;
  }
  if (joining.empty()) return;

  // Into the shared cache, left-padded to the batch's length (the batch shifts right when
  // this prompt is longer).
  const int64_t L = rows_.empty() ? 0 : cache_.length;
  const int64_t length = std::max(L, P);
  if (rows_.empty()) {
    cache_ = KVCache::allocate(cfg, 0, P + kHeadroom, torch::TensorOptions().dtype(model_->dtype()).device(dev));
    for (auto& t : cache_.k) t.zero_();
    for (auto& t : cache_.v) t.zero_();
    cache_.length = P;
  } else if (length > L || length + 1 > cache_.capacity) {
    rebuild(length - L, std::max(cache_.capacity, length + kHeadroom));
  }
  const int64_t copies = joining.size();
  for (size_t l = 0; l < cache_.k.size(); ++l) {
    for (auto* pair : {&cache_.k, &cache_.v}) {
      auto& shared = (*pair)[l];
      const auto& mine = (pair == &cache_.k ? cache.k : cache.v)[l];  // (1, H_kv, D, P)
      auto add = torch::zeros({copies, shared.size(1), shared.size(2), cache_.capacity}, shared.options());
      add.narrow(3, length - P, P).copy_(mine.expand({copies, -1, -1, -1}));
      shared = torch::cat({shared, add}, 0);
    }
  }
  for (auto& row : joining) {
    row->start = length - P;
    rows_.push_back(std::move(row));
  }
}

void Engine::rebuild(int64_t shift, int64_t capacity) {
  const int64_t L = cache_.length;
  const int64_t src = std::max<int64_t>(0, -shift), dst = std::max<int64_t>(0, shift), len = L - src;
  for (auto* list : {&cache_.k, &cache_.v})
    for (auto& t : *list) {
      auto fresh = torch::zeros({t.size(0), t.size(1), t.size(2), capacity}, t.options());
      fresh.narrow(3, dst, len).copy_(t.narrow(3, src, len));
      t = fresh;
    }
  for (auto& row : rows_) row->start += shift;
  cache_.length = L + shift;
  cache_.capacity = capacity;
}

void Engine::drop_rows(const std::vector<size_t>& keep) {
  if (keep.size() == rows_.size()) return;
  std::vector<std::unique_ptr<Row>> kept;
  std::vector<int64_t> index;
  for (size_t r : keep) {
    index.push_back(static_cast<int64_t>(r));
    kept.push_back(std::move(rows_[r]));
  }
  std::set<EngineRequest*> live;
  for (auto& row : kept) live.insert(row->req.get());
  std::set<EngineRequest*> gone;
  for (auto& row : rows_)
    if (row && !live.count(row->req.get())) gone.insert(row->req.get());
  rows_.swap(kept);
  {
    std::lock_guard lock(mu_);
    stats_.requests += gone.size();
  }
  if (rows_.empty()) {
    cache_ = KVCache();
    return;
  }
  cache_.select_rows(torch::tensor(index, torch::kLong).to(model_->device()));
  // Columns left of every remaining row are no longer read by anyone.
  int64_t first = cache_.length;
  for (auto& row : rows_) first = std::min(first, row->start);
  if (first >= kHeadroom) rebuild(-first, cache_.capacity);
}

void Engine::step() {
  std::vector<size_t> keep;
  for (size_t r = 0; r < rows_.size(); ++r)
    if (!rows_[r]->req->cancelled) keep.push_back(r);
  drop_rows(keep);
  if (rows_.empty()) return;

  const int64_t B = rows_.size(), L = cache_.length;
  if (L + 1 > cache_.capacity) rebuild(0, L + 1 + kHeadroom);
  auto tokens = torch::empty({B, 1}, torch::kLong), positions = torch::empty({B, 1}, torch::kLong);
  auto mask = torch::zeros({B, L + 1}, torch::kLong);
  for (int64_t b = 0; b < B; ++b) {
    tokens[b][0] = rows_[b]->pending;
    positions[b][0] = rows_[b]->pos;
    mask[b].narrow(0, rows_[b]->start, L + 1 - rows_[b]->start).fill_(1);
  }
  const auto dev = model_->device();
  auto logits = model_->forward(tokens.to(dev), positions.to(dev), mask.to(dev), &cache_)
                    .select(1, -1).to(torch::kCPU).contiguous();  // (B, V)
  const int64_t V = logits.size(1);
  std::vector<Pick> picks(B);
  at::parallel_for(0, B, 8, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      Row& row = *rows_[b];
      picks[b] = pick(*row.sampler, row.context, row.rng, row.req->top_logprobs, logits.data_ptr<float>() + b * V, V);
    }
  });
  keep.clear();
  for (int64_t b = 0; b < B; ++b) {
    Row& row = *rows_[b];
    if (commit(tok_, *row.req, row.generated, row.context, row.emitted, row.choice, std::move(picks[b]))) continue;
    row.pending = row.generated.back();
    ++row.pos;
    keep.push_back(b);
  }
  {
    std::lock_guard lock(mu_);
    ++stats_.steps;
    stats_.tokens += B;
    stats_.max_batch = std::max(stats_.max_batch, B);
  }
  drop_rows(keep);
}

}  // namespace rlhf
