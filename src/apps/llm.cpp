#include "apps/llm.h"

#include "core/error.h"
#include "generate/generator.h"

namespace rlhf {

LocalLlm::LocalLlm(const std::string& path, const LoadOptions& options, int64_t max_batch)
    : path_(path), lm_(load_model(path, options)), max_batch_(max_batch) {
  check(lm_.tokenizer != nullptr, path + ": no tokenizer found with the model; pass a tokenizer");
}

std::vector<std::vector<Completion>> LocalLlm::complete(const std::vector<std::string>& prompts,
                                                        const CompletionParams& params) {
  check(params.n >= 1, "n must be >= 1");
  check(params.max_tokens >= 0, "max_tokens must be >= 0");
  const Tokenizer& tok = *lm_.tokenizer;
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(prompts.size() * params.n);
  for (const auto& p : prompts) {
    auto ids = encode_prompt(tok, p);
    check(!ids.empty(), "a prompt is empty and the tokenizer has no BOS token to start from");
    for (int j = 0; j < params.n; ++j) rows.push_back(ids);
  }
  GenerateOptions opt;
  opt.max_new_tokens = params.max_tokens;
  opt.sampling.temperature = params.temperature;
  opt.sampling.top_p = params.top_p;
  opt.stop_strings = params.stop;
  opt.seed = params.seed;
  opt.max_batch = max_batch_;
  auto gens = generate(lm_.model, tok, rows, opt);
  std::vector<std::vector<Completion>> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    for (int j = 0; j < params.n; ++j) {
      auto& g = gens[i * params.n + j];
      out[i].push_back({std::move(g.text), g.finish_reason, static_cast<int64_t>(g.tokens.size())});
    }
  return out;
}

std::optional<std::vector<std::vector<double>>> LocalLlm::continuation_logprobs(
    const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) {
  check(!candidates.empty(), "continuation_logprobs: no candidates");
  const Tokenizer& tok = *lm_.tokenizer;
  // Rows of prompt + candidate ids; the candidate's tokens are those the whole text encodes
  // to after the prompt's (what the model would have produced), or the candidate encoded on
  // its own where the tokenizer merges across the boundary.
  struct Row { std::vector<int32_t> ids; size_t n_prompt; };
  std::vector<Row> rows;
  for (const auto& p : prompts) {
    const auto ids_p = encode_prompt(tok, p);
    check(!ids_p.empty(), "a prompt is empty and the tokenizer has no BOS token to start from");
    for (const auto& c : candidates) {
      auto ids = encode_prompt(tok, p + c);
      if (ids.size() <= ids_p.size() || !std::equal(ids_p.begin(), ids_p.end(), ids.begin())) {
        ids = ids_p;
        const auto own = tok.encode(c);
        ids.insert(ids.end(), own.begin(), own.end());
      }
      check(ids.size() > ids_p.size(), "continuation_logprobs: the candidate '" + c + "' encodes to no tokens");
      rows.push_back({std::move(ids), ids_p.size()});
    }
  }
  torch::NoGradGuard no_grad;
  std::vector<double> lp(rows.size());
  const auto dev = lm_.model->device();
  for (size_t begin = 0; begin < rows.size(); begin += static_cast<size_t>(max_batch_)) {
    const size_t end = std::min(rows.size(), begin + static_cast<size_t>(max_batch_));
    size_t T = 0;
    for (size_t r = begin; r < end; ++r) T = std::max(T, rows[r].ids.size());
    // Right padding: causal attention keeps every real position's logits as without it.
    auto batch = torch::zeros({static_cast<int64_t>(end - begin), static_cast<int64_t>(T)}, torch::kLong);
    auto acc = batch.accessor<int64_t, 2>();
    for (size_t r = begin; r < end; ++r)
      for (size_t t = 0; t < rows[r].ids.size(); ++t) acc[r - begin][t] = rows[r].ids[t];
    auto logp = torch::log_softmax(lm_.model->forward(batch.to(dev)).to(torch::kFloat32), -1).to(torch::kCPU);  // (B, T, V)
    auto la = logp.accessor<float, 3>();
    for (size_t r = begin; r < end; ++r) {
      double sum = 0;
      for (size_t t = rows[r].n_prompt; t < rows[r].ids.size(); ++t) sum += la[r - begin][t - 1][rows[r].ids[t]];
      lp[r] = sum;
    }
  }
  std::vector<std::vector<double>> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    out[i].assign(lp.begin() + i * candidates.size(), lp.begin() + (i + 1) * candidates.size());
  return out;
}

}  // namespace rlhf

// ---- EndpointLlm ---------------------------------------------------------------------------

#include <httplib.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <chrono>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

namespace rlhf {

namespace {

std::string strip_v1(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  if (url.size() >= 3 && url.compare(url.size() - 3, 3, "/v1") == 0) url.resize(url.size() - 3);
  return url;
}

}  // namespace

struct EndpointLlm::Impl {
  EndpointOptions opt;
  std::atomic<int64_t> requests{0};
  std::mutex model_mu;
  std::string model;

  httplib::Client client(const std::string& base) const {
    httplib::Client c(base);
    const auto secs = std::chrono::duration<double>(opt.timeout_seconds);
    c.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    c.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    c.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    if (!opt.api_key.empty()) c.set_bearer_token_auth(opt.api_key);
    return c;
  }

  // One HTTP exchange with retries on connection errors, 429 and 5xx. Returns the JSON body.
  // GET without a body, POST with one.
  nlohmann::json call(const std::string& base, const std::string& path, const nlohmann::json* body) {
    std::string last_error;
    for (int attempt = 0; attempt <= opt.retries; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(250 << std::min(attempt, 5)));
      if (requests.fetch_add(1) >= opt.max_requests && opt.max_requests > 0) {
        requests.fetch_sub(1);  // not made
        throw Error(base + ": the request budget (" + std::to_string(opt.max_requests) + ") is spent");
      }
      auto c = client(base);
      auto res = body ? c.Post(path, body->dump(), "application/json") : c.Get(path);
      if (!res) {
        last_error = "no reply (" + httplib::to_string(res.error()) + ")";
        continue;
      }
      if (res->status == 429 || res->status >= 500) {
        last_error = "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300);
        continue;
      }
      if (res->status != 200) throw Error(base + path + ": HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300));
      auto j = nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
      check(!j.is_discarded(), base + path + ": the reply is not JSON");
      return j;
    }
    throw Error(base + path + ": " + last_error + " after " + std::to_string(opt.retries + 1) + " attempts");
  }

  // request(i) for i in [0, n), `concurrency` at a time; the first error stops the rest and is
  // rethrown once all threads are done.
  void for_each_request(size_t n, const std::function<void(size_t)>& request) const {
    std::atomic<size_t> next{0};
    std::mutex err_mu;
    std::string first_error;
    auto worker = [&] {
      for (size_t i; (i = next.fetch_add(1)) < n;) {
        try {
          request(i);
        } catch (const std::exception& e) {
          std::lock_guard lock(err_mu);
          if (first_error.empty()) first_error = e.what();
          next = n;
        }
      }
    };
    std::vector<std::thread> threads;
    for (size_t t = 0; t < std::min<size_t>(opt.concurrency, n); ++t) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
    if (!first_error.empty()) throw Error(first_error);
  }

  std::string model_name(const std::string& base) {
    std::lock_guard lock(model_mu);
    if (model.empty()) {
      auto j = call(base, "/v1/models", nullptr);
      check(j.contains("data") && j["data"].is_array() && !j["data"].empty(),
            base + "/v1/models: no model listed; pass the model name");
      model = j["data"][0].value("id", "");
    }
    return model;
  }
};

EndpointLlm::EndpointLlm(const std::string& base_url, const EndpointOptions& options)
    : base_(strip_v1(base_url)), impl_(std::make_unique<Impl>()) {
  check(options.concurrency >= 1, "endpoint concurrency must be >= 1");
  impl_->opt = options;
  impl_->model = options.model;
}

EndpointLlm::~EndpointLlm() = default;

int64_t EndpointLlm::requests_made() const { return impl_->requests.load(); }

std::vector<std::vector<Completion>> EndpointLlm::complete(const std::vector<std::string>& prompts,
                                                           const CompletionParams& params) {
  check(params.n >= 1, "n must be >= 1");
  const std::string model = impl_->model_name(base_);
  std::vector<std::vector<Completion>> out(prompts.size());
  impl_->for_each_request(prompts.size(), [&](size_t i) {
    nlohmann::json req = {{"model", model}, {"prompt", prompts[i]}, {"max_tokens", params.max_tokens},
                          {"temperature", params.temperature}, {"top_p", params.top_p}, {"n", params.n},
                          // OpenAI's seed is a signed 64-bit integer: the top bit is dropped.
                          {"seed", static_cast<int64_t>((params.seed + i * params.n) & 0x7fffffffffffffffULL)}};
    if (!params.stop.empty()) req["stop"] = params.stop;
    auto j = impl_->call(base_, "/v1/completions", &req);
    check(j.contains("choices") && j["choices"].is_array(), base_ + "/v1/completions: no choices in the reply");
    std::vector<Completion> choices(params.n);
    size_t got = 0;
    for (const auto& c : j["choices"]) {
      const size_t index = c.value("index", got);
      if (index >= choices.size()) continue;
      choices[index].text = c.value("text", "");
      choices[index].finish_reason = c["finish_reason"].is_string() ? c["finish_reason"].get<std::string>() : "";
      ++got;
    }
    check(got == static_cast<size_t>(params.n), base_ + "/v1/completions: asked for " + std::to_string(params.n) +
                                                    " choices, got " + std::to_string(got));
    if (j.contains("usage") && j["usage"].contains("completion_tokens") && params.n == 1)
      choices[0].completion_tokens = j["usage"]["completion_tokens"].get<int64_t>();
    out[i] = std::move(choices);
  });
  return out;
}

std::optional<std::vector<std::vector<double>>> EndpointLlm::continuation_logprobs(
    const std::vector<std::string>& prompts, const std::vector<std::string>& candidates) {
  check(!candidates.empty(), "continuation_logprobs: no candidates");
  const std::string model = impl_->model_name(base_);
  const std::string url = base_ + "/v1/completions";
  std::vector<std::vector<double>> out(prompts.size(), std::vector<double>(candidates.size(), -INFINITY));
  std::atomic<bool> no_logprobs{false};
  impl_->for_each_request(prompts.size(), [&](size_t i) {
    nlohmann::json req = {{"model", model}, {"prompt", prompts[i]}, {"max_tokens", 1}, {"temperature", 0},
                          {"logprobs", impl_->opt.top_logprobs}};
    auto j = impl_->call(base_, "/v1/completions", &req);
    check(j.contains("choices") && j["choices"].is_array() && !j["choices"].empty() && j["choices"][0].is_object(),
          url + ": no choices in the reply");
    const auto& lp = j["choices"][0].contains("logprobs") ? j["choices"][0]["logprobs"] : nlohmann::json();
    // No log-probabilities at all (some servers ignore the field): the caller falls back.
    if (!lp.is_object() || !lp.contains("top_logprobs") || !lp["top_logprobs"].is_array() ||
        lp["top_logprobs"].empty() || !lp["top_logprobs"][0].is_object()) {
      no_logprobs = true;
      return;
    }
    for (const auto& [token, value] : lp["top_logprobs"][0].items()) {
      check(value.is_number(), url + ": a top_logprobs value is not a number");
      for (size_t c = 0; c < candidates.size(); ++c)
        if (token == candidates[c]) out[i][c] = value.get<double>();
    }
  });
  if (no_logprobs) return std::nullopt;
  return out;
}

std::unique_ptr<Llm> open_llm(const std::string& spec, const LoadOptions& options, const EndpointOptions& endpoint) {
  if (spec.rfind("http://", 0) == 0 || spec.rfind("https://", 0) == 0) {
    EndpointOptions o = endpoint;
    if (o.api_key.empty())  // the ecosystem's habit: the key in the environment
      if (const char* key = std::getenv("OPENAI_API_KEY")) o.api_key = key;
    return std::make_unique<EndpointLlm>(spec, o);
  }
  return std::make_unique<LocalLlm>(spec, options);
}

}  // namespace rlhf
