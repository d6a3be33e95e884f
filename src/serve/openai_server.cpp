#include "serve/openai_server.h"

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/utf8.h"
#include "feedback/guarded_http.h"
#include "formats/model_metadata.h"
#include "tokenizer/chat_template.h"

namespace rlhf {

using json = nlohmann::json;

namespace {

// A request the server refuses, in OpenAI's error shape.
struct ApiError {
  int status;
  std::string message;
  std::string param;
  std::string type = "invalid_request_error";
};

void reply_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  json err = {{"message", e.message}, {"type", e.type}, {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", json(nullptr)}};
  res.set_content(dump_json({{"error", err}}), "application/json");
}

ApiError bad(const std::string& param, const std::string& message) { return {400, message, param}; }

// Reads an optional field of the request: absent or null -> `fallback`; the wrong type or a
// value out of range -> 400 naming the field.
int64_t get_int(const json& body, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  const auto& v = body[key];
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()))
    throw bad(key, std::string("'") + key + "' must be an integer");
  const double d = v.get<double>();
  if (d < static_cast<double>(lo) || d > static_cast<double>(hi))
    throw bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                       ", got " + v.dump());
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(d);
}

double get_number(const json& body, const char* key, double fallback, double lo, double hi) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  const auto& v = body[key];
  if (!v.is_number()) throw bad(key, std::string("'") + key + "' must be a number");
  const double d = v.get<double>();
  if (!(d >= lo && d <= hi))
    throw bad(key, std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                       ", got " + v.dump());
  return d;
}

bool get_bool(const json& body, const char* key, bool fallback) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  if (!body[key].is_boolean()) throw bad(key, std::string("'") + key + "' must be true or false");
  return body[key].get<bool>();
}

std::vector<std::string> get_stop(const json& body) {
  std::vector<std::string> stops;
  if (!body.contains("stop") || body["stop"].is_null()) return stops;
  const auto& v = body["stop"];
  if (v.is_string()) {
    stops.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > 16) throw bad("stop", "'stop' takes at most 16 strings");
    for (const auto& s : v) {
      if (!s.is_string()) throw bad("stop", "'stop' must be a string or a list of strings");
      stops.push_back(s.get<std::string>());
    }
  } else {
    throw bad("stop", "'stop' must be a string or a list of strings");
  }
  for (const auto& s : stops)
    if (s.empty()) throw bad("stop", "a stop string must not be empty");
  return stops;
}

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
  return std::string(prefix) + buf;
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(c);
  return b;
}

// One HTTP request's choices as the engine fills them: events queue here until the HTTP
// thread takes them (streaming) or all choices have ended (one reply).
struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<ChoiceEvent> events;
  int open = 0;  // choices not ended yet
  std::vector<std::shared_ptr<EngineRequest>> requests;

  void cancel() {
    for (auto& r : requests) r->cancelled = true;
  }
};

// What the parsed request asks for, shared by both endpoints.
struct Job {
  bool chat = false, stream = false, include_usage = false;
  std::vector<RagHit> retrieved;  // --rag: the chunks the prompt was built from
  int n = 1;
  int top_logprobs = -1;       // -1: no logprobs
  int64_t prompt_tokens = 0;
  std::vector<int32_t> stop_ids;
};

}  // namespace

struct OpenAiServer::Impl {
  LoadedModel& lm;
  ServeOptions opt;
  std::string template_name;
  std::string model_name;
  int64_t context = 0;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<GuardedHttpServer> http;
  std::thread thread;
  std::atomic<bool> stopping{false};
  std::unique_ptr<RagIndex> rag;
  std::mutex rag_mu;  // one SQLite connection: one search at a time

  Impl(LoadedModel& m, const std::string& model_path, const ServeOptions& o, bool engine_thread) : lm(m), opt(o) {
    check(lm.tokenizer != nullptr, model_path + ": no tokenizer found with the model; pass --tokenizer");
    check(opt.max_n >= 1, "max_n must be >= 1");
    template_name = opt.chat_template;
    if (template_name.empty()) {
      const std::string own = read_chat_template(model_path);
      template_name = recognize_chat_template(own);
      if (template_name.empty()) {
        if (!own.empty())
          std::cerr << "serve: the model's chat_template is not one we render (llama2, llama3, chatml, hh); "
                       "using chatml (pass --chat-template to choose)\n";
        template_name = "chatml";
      }
    } else {
      apply_chat_template(template_name, {}, true, lm.tokenizer.get());  // Error for an unknown name
    }
    model_name = opt.model_name.empty() ? std::filesystem::path(model_path).filename().string() : opt.model_name;
    context = lm.config.max_position_embeddings;
    if (opt.max_tokens_limit <= 0) opt.max_tokens_limit = context;
    if (!opt.rag_index.empty()) {
      check(std::filesystem::exists(opt.rag_index), opt.rag_index + ": no such RAG index (make one with rlhf rag index)");
      check(opt.rag.k >= 1, "rag k must be >= 1");
      rag = std::make_unique<RagIndex>(opt.rag_index);
    }
    engine = std::make_unique<Engine>(lm.model, *lm.tokenizer, opt.engine, engine_thread);
  }

  json retrieved_json(const std::vector<RagHit>& hits) const {
    json out = json::array();
    for (const auto& h : hits) out.push_back({{"id", h.id}, {"doc", h.doc}, {"score", h.score}, {"text", valid_utf8(h.text)}});
    return out;
  }

  const Tokenizer& tok() const { return *lm.tokenizer; }

  // Stop ids of every request: EOS, and the template's end-of-turn strings that are one token.
  std::vector<int32_t> stop_ids(bool chat, std::vector<std::string>* stop_strings) const {
    std::vector<int32_t> ids;
    if (tok().eos_id() >= 0) ids.push_back(tok().eos_id());
    if (!chat) return ids;
    for (const auto& s : chat_template_stops(template_name)) {
      const int32_t id = tok().token_id(s);
      if (id >= 0 && tok().is_special(id)) ids.push_back(id);
      else stop_strings->push_back(s);
    }
    return ids;
  }

  void check_auth(const httplib::Request& req) const {
    if (opt.api_key.empty()) return;
    if (req.get_header_value("Authorization") != "Bearer " + opt.api_key)
      throw ApiError{401, "Invalid or missing API key (send 'Authorization: Bearer KEY')", "", "authentication_error"};
  }

  json parse_body(const httplib::Request& req) const {
    auto body = json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) throw bad("", "the request body is not valid JSON");
    if (!body.is_object()) throw bad("", "the request body must be a JSON object");
    return body;
  }

  // The prompts of /v1/completions: a string, a list of strings, a list of ids, or a list of lists of ids.
  std::vector<std::vector<int32_t>> completion_prompts(const json& body) const {
    if (!body.contains("prompt")) throw bad("prompt", "'prompt' is required");
    const auto& p = body["prompt"];
    std::vector<std::vector<int32_t>> out;
    auto ids_of = [&](const json& a) {
      std::vector<int32_t> ids;
      for (const auto& x : a) {
        if (!x.is_number_integer()) throw bad("prompt", "'prompt' token lists must hold integers");
        const int64_t id = x.get<int64_t>();
        if (id < 0 || id >= lm.config.vocab_size)
          throw bad("prompt", "token id " + std::to_string(id) + " is outside the vocabulary");
        ids.push_back(static_cast<int32_t>(id));
      }
      return ids;
    };
    if (p.is_string()) {
      out.push_back(encode_prompt(tok(), p.get<std::string>()));
    } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
      out.push_back(ids_of(p));
    } else if (p.is_array() && !p.empty()) {
      for (const auto& e : p) {
        if (e.is_string()) out.push_back(encode_prompt(tok(), e.get<std::string>()));
        else if (e.is_array()) out.push_back(ids_of(e));
        else throw bad("prompt", "'prompt' must be a string, a list of strings or token ids");
      }
    } else {
      throw bad("prompt", "'prompt' must be a string, a list of strings or token ids (not empty)");
    }
    for (const auto& ids : out)
      if (ids.empty()) throw bad("prompt", "a prompt is empty and the tokenizer has no BOS token to start from");
    return out;
  }

  std::vector<int32_t> chat_prompt(const json& body, Job& job) {
    if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
      throw bad("messages", "'messages' must be a non-empty list");
    std::vector<ChatMessage> messages;
    for (const auto& m : body["messages"]) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw bad("messages", "each message needs a 'role' string");
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "developer")
        throw bad("messages", "unknown role '" + role + "' (system, developer, user or assistant)");
      std::string content;
      const auto& c = m.contains("content") ? m["content"] : json();
      if (c.is_string()) {
        content = c.get<std::string>();
      } else if (c.is_array()) {
        for (const auto& part : c) {
          if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
            throw bad("messages", "only text content parts are supported");
          content += part["text"].get<std::string>();
        }
      } else if (!c.is_null()) {
        throw bad("messages", "'content' must be a string or a list of text parts");
      }
      messages.push_back({role == "developer" ? "system" : role, content});
    }
    if (rag) {
      auto last = std::find_if(messages.rbegin(), messages.rend(), [](const ChatMessage& m) { return m.role == "user"; });
      if (last == messages.rend()) throw bad("messages", "with --rag, a chat needs a user message (the question)");
      RagPrompt rp;
      {
        std::lock_guard lock(rag_mu);
        rp = rag_prompt(*rag, last->content, opt.rag);
      }
      last->content = rp.prompt;
      job.retrieved = std::move(rp.retrieved);
    }
    std::string text;
    try {
      text = apply_chat_template(template_name, messages, /*add_generation_prompt=*/true, &tok());
    } catch (const Error& e) {
      throw bad("messages", e.what());
    }
    // The template writes BOS itself where the model wants one, as apply_chat_template does.
    auto ids = tok().encode(text, {.add_bos = false, .parse_special = true});
    if (ids.empty() && tok().bos_id() >= 0) ids.push_back(tok().bos_id());
    if (ids.empty()) throw bad("messages", "the conversation renders to no tokens");
    return ids;
  }

  // Parses the sampling fields, submits one engine request per prompt and returns the collector.
  std::shared_ptr<Collector> submit(const json& body, const std::vector<std::vector<int32_t>>& prompts, Job& job) {
    job.stream = get_bool(body, "stream", false);
    if (body.contains("stream_options") && body["stream_options"].is_object())
      job.include_usage = get_bool(body["stream_options"], "include_usage", false);
    job.n = static_cast<int>(get_int(body, "n", 1, 1, std::min<int64_t>(opt.max_n, opt.engine.max_rows)));
    if (body.contains("best_of") && !body["best_of"].is_null() && get_int(body, "best_of", job.n, 1, 1 << 20) != job.n)
      throw bad("best_of", "'best_of' other than n is not supported");
    if (get_bool(body, "echo", false)) throw bad("echo", "'echo' is not supported");
    for (const char* k : {"presence_penalty", "frequency_penalty"})
      if (get_number(body, k, 0, -2, 2) != 0) throw bad(k, std::string("'") + k + "' is not supported (use 0)");
    SamplingParams sp;
    sp.temperature = static_cast<float>(get_number(body, "temperature", 1.0, 0, 2));
    sp.top_p = static_cast<float>(get_number(body, "top_p", 1.0, 0, 1));
    if (sp.top_p <= 0) throw bad("top_p", "'top_p' must be > 0");
    const bool seeded = body.contains("seed") && !body["seed"].is_null();
    const uint64_t seed = seeded ? static_cast<uint64_t>(get_int(body, "seed", 0, INT64_MIN, INT64_MAX))
                                 : std::random_device{}();
    auto stops = get_stop(body);
    job.stop_ids = stop_ids(job.chat, &stops);
    if (job.chat) {
      if (get_bool(body, "logprobs", false))
        job.top_logprobs = static_cast<int>(get_int(body, "top_logprobs", 0, 0, 20));
      else if (body.contains("top_logprobs") && !body["top_logprobs"].is_null())
        throw bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    } else {
      job.top_logprobs = static_cast<int>(get_int(body, "logprobs", -1, 0, 20));
    }
    const char* tokens_key = job.chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    int64_t longest = 0;
    for (const auto& p : prompts) longest = std::max<int64_t>(longest, p.size());
    const int64_t room = std::max<int64_t>(1, context - longest);
    const int64_t max_tokens = get_int(body, tokens_key, job.chat ? std::min(room, opt.max_tokens_limit) : 16, 1,
                                       opt.max_tokens_limit);
    if (longest + max_tokens > context)
      throw bad(tokens_key, "this model's context is " + std::to_string(context) + " tokens; the prompt has " +
                                std::to_string(longest) + " and " + tokens_key + " asks for " +
                                std::to_string(max_tokens));

    auto col = std::make_shared<Collector>();
    for (size_t i = 0; i < prompts.size(); ++i) {
      auto r = std::make_shared<EngineRequest>();
      r->prompt = prompts[i];
      r->n = job.n;
      r->max_tokens = max_tokens;
      r->sampling = sp;
      r->seed = seed + i;  // choice j of prompt i: sequence_rng(seed + i, j)
      r->stop = stops;
      r->stop_ids = job.stop_ids;
      r->top_logprobs = job.top_logprobs;
      const int base = static_cast<int>(i) * job.n;
      std::weak_ptr<Collector> weak = col;
      // A whole reply's thread is woken once, when the last choice ends: a wake-up per token
      // would take a core from the decoding threads every step.
      r->on_event = [weak, base, stream = job.stream](const ChoiceEvent& ev) {
        auto c = weak.lock();
        if (!c) return;
        ChoiceEvent e = ev;
        e.index += base;
        std::lock_guard lock(c->mu);
        if (!e.finish_reason.empty()) --c->open;
        c->events.push_back(std::move(e));
        if (stream || c->open == 0) c->cv.notify_all();
      };
      job.prompt_tokens += prompts[i].size();
      col->requests.push_back(r);
    }
    col->open = static_cast<int>(prompts.size()) * job.n;
    for (auto& r : col->requests) {
      bool queued = false;
      try {
        queued = engine->submit(r);
      } catch (const Error& e) {
        col->cancel();
        throw bad("", e.what());
      }
      if (!queued) {
        col->cancel();
        throw ApiError{429, "the server is busy: " + std::to_string(opt.engine.max_queue) +
                                " requests are waiting already; retry later",
                       "", "rate_limit_error"};
      }
    }
    return col;
  }

  // Waits for events; false when the server is stopping.
  bool wait(Collector& c, std::unique_lock<std::mutex>& lock, bool until_done) {
    while (until_done ? c.open > 0 : (c.events.empty() && c.open > 0)) {
      if (stopping) return false;
      c.cv.wait_for(lock, std::chrono::milliseconds(100));
    }
    return true;
  }

  // Whether the event's token gets a logprobs entry: asked for, and a token of the text (a
  // stop token that ended the choice is not).
  bool logs_token(const Job& job, const ChoiceEvent& ev) const {
    if (job.top_logprobs < 0 || ev.token < 0) return false;
    const bool stop_token = std::find(job.stop_ids.begin(), job.stop_ids.end(), ev.token) != job.stop_ids.end();
    return !(ev.finish_reason == "stop" && stop_token);
  }

  // Completions' top_logprobs entry of one token: token text -> logprob.
  json top_map(const ChoiceEvent& ev) const {
    json top = json::object();
    for (const auto& t : ev.top) top[valid_utf8(tok().token_bytes(t.id))] = t.logprob;
    return top;
  }

  json usage(const Job& job, int64_t completion) const {
    return {{"prompt_tokens", job.prompt_tokens}, {"completion_tokens", completion},
            {"total_tokens", job.prompt_tokens + completion}};
  }

  // The chunk of one event (streaming).
  json chunk(const Job& job, const std::string& id, int64_t created, const ChoiceEvent& ev, bool first_of_choice) const {
    json choice = {{"index", ev.index}, {"finish_reason", ev.finish_reason.empty() ? json(nullptr) : json(ev.finish_reason)}};
    const bool logged = logs_token(job, ev);
    if (job.chat) {
      json delta = json::object();
      if (first_of_choice) delta["role"] = "assistant";
      if (!ev.delta.empty() || first_of_choice) delta["content"] = ev.delta;
      choice["delta"] = delta;
      choice["logprobs"] = logged ? json{{"content", {chat_logprob(ev)}}} : json(nullptr);
    } else {
      choice["text"] = ev.delta;
      if (logged) {
        choice["logprobs"] = {{"tokens", {valid_utf8(tok().token_bytes(ev.token))}},
                              {"token_logprobs", {ev.logprob}},
                              {"top_logprobs", {top_map(ev)}}};
      } else {
        choice["logprobs"] = nullptr;
      }
    }
    return {{"id", id}, {"object", job.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
            {"model", model_name}, {"choices", {choice}}};
  }

  json chat_logprob(const ChoiceEvent& ev) const {
    const std::string t = tok().token_bytes(ev.token);
    json top = json::array();
    for (const auto& x : ev.top) {
      const std::string s = tok().token_bytes(x.id);
      top.push_back({{"token", valid_utf8(s)}, {"logprob", x.logprob}, {"bytes", bytes_of(s)}});
    }
    return {{"token", valid_utf8(t)}, {"logprob", ev.logprob}, {"bytes", bytes_of(t)}, {"top_logprobs", top}};
  }

  // One reply with every choice (not streaming).
  void reply_whole(Collector& c, const Job& job, httplib::Response& res) {
    std::unique_lock lock(c.mu);
    if (!wait(c, lock, /*until_done=*/true)) throw ApiError{503, "the server is stopping", "", "server_error"};
    const int count = static_cast<int>(c.requests.size()) * job.n;
    struct Choice {
      std::string text, finish;
      json logprobs = json::array();
      json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
    };
    std::vector<Choice> choices(count);
    int64_t completion = 0;
    for (const auto& ev : c.events) {
      Choice& ch = choices[ev.index];
      if (ev.finish_reason == "error") throw ApiError{500, "generation failed: " + ev.delta, "", "server_error"};
      if (logs_token(job, ev)) {
        if (job.chat) {
          ch.logprobs.push_back(chat_logprob(ev));
        } else {
          ch.offsets.push_back(ch.text.size());
          ch.tokens.push_back(valid_utf8(tok().token_bytes(ev.token)));
          ch.token_logprobs.push_back(ev.logprob);
          ch.top.push_back(top_map(ev));
        }
      }
      ch.text += ev.delta;
      if (!ev.finish_reason.empty()) {
        ch.finish = ev.finish_reason;
        completion += ev.completion_tokens;
      }
    }
    json out_choices = json::array();
    for (int i = 0; i < count; ++i) {
      Choice& ch = choices[i];
      json choice = {{"index", i}, {"finish_reason", ch.finish}};
      if (job.chat) {
        choice["message"] = {{"role", "assistant"}, {"content", valid_utf8(ch.text)}};
        if (rag) choice["citations"] = parse_rag_answer(ch.text, job.retrieved).citations;
        choice["logprobs"] = job.top_logprobs >= 0 ? json{{"content", ch.logprobs}} : json(nullptr);
      } else {
        choice["text"] = valid_utf8(ch.text);
        choice["logprobs"] = job.top_logprobs >= 0 ? json{{"tokens", ch.tokens}, {"token_logprobs", ch.token_logprobs},
                                                          {"top_logprobs", ch.top}, {"text_offset", ch.offsets}}
                                                    : json(nullptr);
      }
      out_choices.push_back(choice);
    }
    json out = {{"id", random_id(job.chat ? "chatcmpl-" : "cmpl-")},
                {"object", job.chat ? "chat.completion" : "text_completion"},
                {"created", unix_now()},
                {"model", model_name},
                {"choices", out_choices},
                {"usage", usage(job, completion)}};
    if (rag) out["retrieved"] = retrieved_json(job.retrieved);
    res.set_content(dump_json(out), "application/json");
  }

  void reply_stream(std::shared_ptr<Collector> c, const Job& job, httplib::Response& res) {
    const std::string id = random_id(job.chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = unix_now();
    auto started = std::make_shared<std::vector<bool>>(c->requests.size() * job.n, false);
    auto completion = std::make_shared<int64_t>(0);
    auto done = std::make_shared<bool>(false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, c, job, id, created, started, completion, done](size_t, httplib::DataSink& sink) {
          if (*done) return false;
          std::vector<ChoiceEvent> batch;
          bool finished;
          {
            std::unique_lock lock(c->mu);
            if (!wait(*c, lock, /*until_done=*/false)) return false;
            batch.assign(std::make_move_iterator(c->events.begin()), std::make_move_iterator(c->events.end()));
            c->events.clear();
            finished = c->open == 0;
          }
          auto send = [&](const json& j) {
            const std::string line = "data: " + dump_json(j) + "\n\n";
            return sink.write(line.data(), line.size());
          };
          for (const auto& ev : batch) {
            if (ev.finish_reason == "error") {
              send({{"error", {{"message", "generation failed: " + ev.delta}, {"type", "server_error"}}}});
              continue;
            }
            const bool first = !(*started)[ev.index];
            (*started)[ev.index] = true;
            json j = chunk(job, id, created, ev, first);
            if (rag && first && ev.index == 0) j["retrieved"] = retrieved_json(job.retrieved);
            if (!send(j)) return false;
            *completion += ev.completion_tokens;
          }
          if (finished) {
            if (job.include_usage) {
              json u = {{"id", id}, {"object", job.chat ? "chat.completion.chunk" : "text_completion"},
                        {"created", created}, {"model", model_name}, {"choices", json::array()},
                        {"usage", usage(job, *completion)}};
              if (!send(u)) return false;
            }
            const std::string end = "data: [DONE]\n\n";
            if (!sink.write(end.data(), end.size())) return false;
            *done = true;
            sink.done();
          }
          return true;
        },
        [c](bool success) {
          if (!success) c->cancel();  // the client went away: its rows leave the batch
        });
  }

  void handle(const httplib::Request& req, httplib::Response& res, bool chat) {
    try {
      check_auth(req);
      const json body = parse_body(req);
      Job job;
      job.chat = chat;
      const auto prompts = chat ? std::vector<std::vector<int32_t>>{chat_prompt(body, job)} : completion_prompts(body);
      auto col = submit(body, prompts, job);
      if (job.stream) {
        reply_stream(col, job, res);
      } else {
        try {
          reply_whole(*col, job, res);
        } catch (...) {
          col->cancel();
          throw;
        }
      }
    } catch (const ApiError& e) {
      reply_error(res, e);
    }
  }

  void routes() {
    HttpLimits limits;
    limits.max_body = opt.max_body;
    // Every running or queued request holds a worker for as long as it generates.
    limits.workers = static_cast<size_t>(opt.engine.max_rows) + opt.engine.max_queue + 4;
    limits.max_queued = 64;
    limits.write_seconds = 60;
    http = std::make_unique<GuardedHttpServer>(limits);
    auto& svr = *http;
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const EngineStats s = engine->stats();
      json engine_stats = {{"steps", s.steps}, {"tokens", s.tokens}, {"max_batch", s.max_batch},
                           {"requests", s.requests}, {"queued", engine->queued()}};
      res.set_content(dump_json({{"status", "ok"}, {"engine", engine_stats}}), "application/json");
    });
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        check_auth(req);
        json m = {{"id", model_name}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "rlhf.cpp"},
                  {"max_model_len", context}};
        res.set_content(dump_json({{"object", "list"}, {"data", {m}}}), "application/json");
      } catch (const ApiError& e) {
        reply_error(res, e);
      }
    });
    svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, false); });
    svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { handle(req, res, true); });
    svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) reply_error(res, {404, "no route " + req.method + " " + req.path, "", "not_found_error"});
      else reply_error(res, {res.status, "HTTP " + std::to_string(res.status), "", "invalid_request_error"});
    });
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      reply_error(res, {500, what, "", "server_error"});
    });
  }
};

OpenAiServer::OpenAiServer(LoadedModel& model, const std::string& model_path, const ServeOptions& options,
                           bool engine_thread)
    : impl_(std::make_unique<Impl>(model, model_path, options, engine_thread)) {
  impl_->routes();
}

OpenAiServer::~OpenAiServer() { stop(); }

const std::string& OpenAiServer::chat_template() const { return impl_->template_name; }

int OpenAiServer::start() {
  auto& o = impl_->opt;
  check(o.port >= 0 && o.port <= 65535, "port must be between 0 and 65535");
  auto& svr = *impl_->http;
  const int port = o.port == 0 ? svr.bind_to_any_port(o.host)
                               : (svr.bind_to_port(o.host, static_cast<int>(o.port)) ? static_cast<int>(o.port) : -1);
  check(port > 0, "serve: cannot listen on " + o.host + ":" + std::to_string(o.port) + " (in use, or not an address here)");
  impl_->thread = std::thread([this] { impl_->http->listen_after_bind(); });
  return port;
}

void OpenAiServer::stop() {
  if (!impl_ || !impl_->http) return;
  impl_->stopping = true;
  impl_->http->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->http->close();
}

void OpenAiServer::run_engine(const std::function<bool()>& should_stop) { impl_->engine->run_here(should_stop); }

void serve_openai(LoadedModel& model, const std::string& model_path, const ServeOptions& options,
                  const std::function<bool()>& should_stop) {
  OpenAiServer server(model, model_path, options, /*engine_thread=*/false);
  const int port = server.start();
  std::cerr << "serving " << model_path << " (chat template " << server.chat_template() << ") on http://"
            << options.host << ":" << port << "/v1" << std::endl;
  server.run_engine(should_stop);  // this thread's OpenMP team decodes (serve/engine.h)
  server.stop();
}

}  // namespace rlhf
