#include "feedback/label_server.h"

#include <chrono>
#include <cmath>
#include <iostream>
#include <random>
#include <sstream>
#include <type_traits>
#include <unordered_map>
#include <nlohmann/json.hpp>

#include "core/io.h"
#include "core/utf8.h"
#include "feedback/guarded_http.h"
#include "feedback/web_assets.h"
#include "generate/generator.h"
#include "model/model.h"

using json = nlohmann::json;

namespace rlhf {

namespace {

// Defence in depth on top of the page only ever setting model text with textContent: no
// inline script, no plugins, nothing from elsewhere.
const httplib::Headers kSecurityHeaders = {
    {"Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    {"Referrer-Policy", "no-referrer"},
    {"Cache-Control", "no-store"},
};

void reply(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json; charset=utf-8");  // model text may not be UTF-8
}

// Failed sign-ins per client address: a burst of kBurst, then one a second; a try beyond that
// is answered 429 without a look at its token, so guessing tokens goes at a try a second.
class SignInLimiter {
 public:
  // Seconds `address` must wait before its next try (0: it may try now).
  double wait(const std::string& address) {
    std::lock_guard lk(mu_);
    auto it = buckets_.find(address);
    if (it == buckets_.end()) return 0;
    refill(it->second);
    return it->second.tries >= 1 ? 0 : (1 - it->second.tries) / kPerSecond;
  }
  void failed(const std::string& address) {
    std::lock_guard lk(mu_);
    if (buckets_.size() > 10000)  // forget the addresses that have waited their time out
      for (auto it = buckets_.begin(); it != buckets_.end();) {
        refill(it->second);
        it = it->second.tries >= kBurst ? buckets_.erase(it) : std::next(it);
      }
    Bucket& b = buckets_.try_emplace(address, Bucket{kBurst, Clock::now()}).first->second;
    refill(b);
    b.tries = std::max(0.0, b.tries - 1);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr double kBurst = 5, kPerSecond = 1;
  struct Bucket {
    double tries;  // failed sign-ins the address may still make now
    Clock::time_point at;
  };
  static void refill(Bucket& b) {
    const auto now = Clock::now();
    b.tries = std::min(kBurst, b.tries + std::chrono::duration<double>(now - b.at).count() * kPerSecond);
    b.at = now;
  }
  std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
};

json nan_to_null(double v) { return std::isnan(v) ? json(nullptr) : json(v); }

json progress_json(const LabelProgress& p) {
  return {{"prompts", p.prompts}, {"ready", p.ready},   {"submissions", p.submissions},
          {"target", p.target},   {"done_prompts", p.done_prompts}, {"mine", p.mine}};
}

json body_of(const httplib::Request& req) {
  try {
    json j = json::parse(req.body);
    if (!j.is_object()) throw LabelError(400, "the request body must be a JSON object");
    return j;
  } catch (const json::exception&) {
    throw LabelError(400, "the request body is not valid JSON");
  }
}

template <class T>
T field(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) throw LabelError(400, std::string("missing field '") + name + "'");
  // get<int64_t>() would turn 1.5 into 1 and answer for another prompt than the one meant.
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    if (!it->is_number_integer())
      throw LabelError(400, std::string("field '") + name + "' must be an integer, got " + dump_json(*it));
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    throw LabelError(400, std::string("field '") + name + "' has the wrong type");
  }
}

// `ranking`: best first; an entry is a completion id or a list of tied ids.
std::vector<std::vector<int64_t>> parse_ranking(const json& j) {
  if (!j.is_array()) throw LabelError(400, "field 'ranking' must be an array");
  std::vector<std::vector<int64_t>> tiers;
  for (const auto& e : j) {
    if (e.is_number_integer()) tiers.push_back({e.get<int64_t>()});
    else if (e.is_array()) {
      std::vector<int64_t> t;
      for (const auto& x : e) {
        if (!x.is_number_integer()) throw LabelError(400, "ranking: ids are integers");
        t.push_back(x.get<int64_t>());
      }
      tiers.push_back(t);
    } else throw LabelError(400, "ranking: each entry is a completion id or a list of tied ids");
  }
  return tiers;
}

std::map<int64_t, std::vector<std::string>> parse_flags(const json& j) {
  std::map<int64_t, std::vector<std::string>> flags;
  if (j.is_null()) return flags;
  if (!j.is_object()) throw LabelError(400, "field 'flags' must be an object {completion id: [flags]}");
  for (const auto& [k, v] : j.items()) {
    int64_t id = 0;
    try {
      size_t used = 0;
      id = std::stoll(k, &used);
      if (used != k.size()) throw std::invalid_argument(k);
    } catch (const std::exception&) {
      throw LabelError(400, "flags: '" + k + "' is not a completion id");
    }
    if (!v.is_array()) throw LabelError(400, "flags: a list of flag names per completion");
    for (const auto& f : v) {
      if (!f.is_string()) throw LabelError(400, "flags: flag names are strings");
      flags[id].push_back(f.get<std::string>());
    }
  }
  return flags;
}

}  // namespace

LabelServer::LabelServer(LabelStore& store)
    : store_(store), http_(std::make_unique<GuardedHttpServer>(HttpLimits{}, kSecurityHeaders)) {
  auto& svr = *http_;
  // SO_REUSEADDR only: httplib's default SO_REUSEPORT would let a second server bind the same
  // port and silently take half the labelers.
  svr.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });

  // RLHF_WEB_DIR=web serves the page from the source tree instead (edit, reload, no rebuild).
  const char* dev_dir = std::getenv("RLHF_WEB_DIR");
  auto serve_asset = [dev = std::string(dev_dir ? dev_dir : "")](const char* name) {
    return [name, dev](const httplib::Request&, httplib::Response& res) {
      const auto a = web_asset(name);
      res.set_content(dev.empty() ? std::string(a->body) : read_file(std::filesystem::path(dev) / name),
                      std::string(a->content_type));
    };
  };
  svr.Get("/", serve_asset("label.html"));
  svr.Get("/stats", serve_asset("label.html"));
  svr.Get("/app.js", serve_asset("label.js"));
  svr.Get("/app.css", serve_asset("label.css"));

  // Handlers run inside `guarded`: LabelError -> its status; anything else -> 500, logged.
  auto guarded = [](auto fn) {
    return [fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const LabelError& e) {
        reply(res, e.status, {{"error", e.what()}});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rlhf label: %s %s: %s\n", req.method.c_str(), req.path.c_str(), e.what());
        reply(res, 500, {{"error", std::string("server error: ") + e.what()}});
      }
    };
  };
  auto labeler_of = [this](const httplib::Request& req) {
    const auto h = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (h.rfind(prefix, 0) != 0) throw LabelError(401, "not signed in (no Authorization: Bearer header)");
    return store_.session_labeler(h.substr(prefix.size()));
  };

  svr.Post("/api/signin", guarded([this, limiter = std::make_shared<SignInLimiter>()](const httplib::Request& req,
                                                                                       httplib::Response& res) {
             if (const double wait = limiter->wait(req.remote_addr); wait > 0) {
               const auto seconds = std::to_string(static_cast<int64_t>(std::ceil(wait)));
               res.set_header("Retry-After", seconds);
               throw LabelError(429, "too many failed sign-ins from your address; try again in " + seconds + " s");
             }
             const json b = body_of(req);
             const auto name = field<std::string>(b, "name");
             try {
               reply(res, 200, {{"session", store_.sign_in(name, field<std::string>(b, "token"))}, {"labeler", name}});
             } catch (const LabelError& e) {
               if (e.status == 401) limiter->failed(req.remote_addr);
               throw;
             }
           }));
  svr.Get("/api/task", guarded([this, labeler_of](const httplib::Request& req, httplib::Response& res) {
            const auto who = labeler_of(req);
            json task = nullptr;
            if (auto t = store_.next_task(who)) {
              json cs = json::array();
              for (size_t i = 0; i < t->completions.size(); ++i) cs.push_back({{"id", t->completion_ids[i]}, {"text", t->completions[i]}});
              task = {{"prompt_id", t->prompt_id}, {"prompt", t->prompt}, {"completions", cs}};
            }
            reply(res, 200,
                  {{"task", task}, {"labeler", who}, {"progress", progress_json(store_.progress(who))},
                   {"flags", label_flags()}, {"generating", generating.load()}});
          }));
  svr.Post("/api/submit", guarded([this, labeler_of](const httplib::Request& req, httplib::Response& res) {
             const auto who = labeler_of(req);
             const json b = body_of(req);
             LabelSubmission s;
             s.labeler = who;
             s.prompt_id = field<int64_t>(b, "prompt_id");
             s.ranking = parse_ranking(b.contains("ranking") ? b["ranking"] : throw LabelError(400, "missing field 'ranking'"));
             s.flags = parse_flags(b.value("flags", json(nullptr)));
             s.note = b.contains("note") ? field<std::string>(b, "note") : "";
             const auto r = store_.submit(s);
             reply(res, 200,
                   {{"status", r == LabelStore::SubmitResult::stored ? "stored" : "duplicate"},
                    {"progress", progress_json(store_.progress(who))}});
           }));
  svr.Get("/api/progress", guarded([this, labeler_of](const httplib::Request& req, httplib::Response& res) {
            reply(res, 200, progress_json(store_.progress(labeler_of(req))));
          }));
  svr.Get("/api/stats", guarded([this, labeler_of](const httplib::Request& req, httplib::Response& res) {
            labeler_of(req);
            const auto st = store_.stats();
            json pairs = json::array();
            for (const auto& p : st.pairs)
              pairs.push_back({{"a", p.a}, {"b", p.b}, {"shared_prompts", p.shared_prompts},
                               {"agreement", nan_to_null(p.agreement)}, {"kendall_tau", nan_to_null(p.kendall_tau)}});
            reply(res, 200,
                  {{"counts", st.counts}, {"pairs", pairs}, {"shared_prompts", st.shared_prompts},
                   {"agreement", nan_to_null(st.agreement)}, {"kendall_tau", nan_to_null(st.kendall_tau)},
                   {"progress", progress_json(store_.progress())}});
          }));
  svr.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) reply(res, res.status, {{"error", "HTTP " + std::to_string(res.status)}});
  });
}

LabelServer::~LabelServer() { stop(); }

int LabelServer::start(const std::string& host, int64_t port) {
  check_port(port);
  auto& svr = *http_;
  if (port == 0) port_ = svr.bind_to_any_port(host);
  else port_ = svr.bind_to_port(host, static_cast<int>(port)) ? static_cast<int>(port) : -1;
  check(port_ > 0, "label server: cannot listen on " + host + ":" + std::to_string(port) + " (in use, or not an address here)");
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return port_;
}

void LabelServer::stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
  if (http_) http_->close();
}

CompletionWorker::CompletionWorker(LabelStore& store, CompleteFn complete, int64_t batch, std::atomic<int64_t>* remaining) {
  thread_ = std::thread([this, &store, complete = std::move(complete), batch, remaining] {
    try {
      auto todo = store.prompts_without_completions();
      if (remaining) *remaining = static_cast<int64_t>(todo.size());
      for (size_t i = 0; i < todo.size() && !stop_; i += batch) {
        std::vector<std::string> prompts;
        for (size_t j = i; j < std::min(todo.size(), i + batch); ++j) prompts.push_back(todo[j].second);
        const auto completions = complete(prompts);
        check(completions.size() == prompts.size(), "completion worker: wrong number of results");
        for (size_t j = 0; j < prompts.size(); ++j) {
          store.add_completions(todo[i + j].first, completions[j]);
          if (remaining) --*remaining;
        }
      }
    } catch (const std::exception& e) {
      std::lock_guard lk(mu_);
      error_ = e.what();
    }
    done_ = true;
  });
}

CompletionWorker::~CompletionWorker() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void CompletionWorker::wait() {
  if (thread_.joinable()) thread_.join();
}

std::string CompletionWorker::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

void check_port(int64_t port) {
  check(port >= 0 && port <= 65535,
        "label: port " + std::to_string(port) + " is not a TCP port (0 to 65535; 0: any free one)");
}

std::vector<LabelPrompt> read_label_prompts(const std::filesystem::path& path) {
  std::istringstream lines(read_maybe_gzip(path));
  std::vector<LabelPrompt> out;
  size_t line_no = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_no);
    const json j = json::parse(line, nullptr, false);
    check(j.is_object(), where + ": not a JSON object");
    check(j.contains("prompt") && j["prompt"].is_string(), where + ": field 'prompt' must be a string");
    LabelPrompt p{j["prompt"].get<std::string>(), {}};
    if (j.contains("completions")) {
      const auto& c = j["completions"];
      check(c.is_array() && c.size() >= 2, where + ": field 'completions' must be a list of at least 2 texts");
      for (const auto& t : c) {
        check(t.is_string(), where + ": field 'completions' must hold strings");
        p.completions.push_back(t.get<std::string>());
      }
    }
    out.push_back(std::move(p));
  }
  check(!out.empty(), path.string() + ": no prompts");
  return out;
}

void prepare_label_store(LabelStore& store, const LabelServeOptions& opt, const std::vector<LabelPrompt>& prompts) {
  check(opt.k >= 2, "label: k must be at least 2 (a ranking needs two completions)");
  check(opt.labelers_per_prompt >= 1, "label: labelers_per_prompt must be at least 1");
  check_port(opt.port);
  check(opt.session_hours > 0 && std::isfinite(opt.session_hours), "label: session_hours must be a positive number of hours");
  store.set_meta("labelers_per_prompt", std::to_string(opt.labelers_per_prompt));
  store.set_meta("session_seconds", std::to_string(opt.session_hours * 3600));
  std::vector<std::pair<std::string, std::string>> labelers;
  for (const auto& nt : opt.labelers) {
    const auto eq = nt.find('=');
    check(eq != std::string::npos && eq > 0, "label: --labeler takes NAME=TOKEN, got '" + nt + "'");
    labelers.emplace_back(nt.substr(0, eq), nt.substr(eq + 1));
  }
  if (!labelers.empty()) store.set_labelers(labelers);
  if (!opt.token.empty()) {
    check(opt.token.size() >= 4, "label: the access token is too short (4 characters at least)");
    store.set_meta("shared_token", opt.token);
  } else if (!store.meta("shared_token") && opt.labelers.empty()) {
    std::random_device rd;
    std::ostringstream t;
    for (int i = 0; i < 4; ++i) t << std::hex << rd();
    store.set_meta("shared_token", t.str());
    std::cout << "access token (any name): " << t.str() << std::endl;
  }
  for (const auto& p : prompts) {
    const int64_t id = store.add_prompt(p.prompt);
    if (!p.completions.empty() && store.completion_count(id) == 0) store.add_completions(id, p.completions);
  }
}

void serve_labels(LabelStore& store, const LabelServeOptions& opt, const std::function<CompleteFn()>& make_completer,
                  const std::function<bool()>& finished) {
  LabelServer server(store);
  std::unique_ptr<CompletionWorker> worker;
  if (!store.prompts_without_completions().empty()) {
    auto complete = make_completer();
    check(static_cast<bool>(complete), "label: some prompts have no completions and there is no model to generate them (--model)");
    worker = std::make_unique<CompletionWorker>(store, complete, 8, &server.generating);
  }
  const int port = server.start(opt.host, opt.port);
  const auto p = store.progress();
  std::cout << "serving http://" << opt.host << ":" << port << "/  (" << store.path().string() << ": " << p.prompts
            << " prompts, " << p.submissions << " of " << p.target << " rankings)" << std::endl;
  while (!finished()) {
    if (worker && worker->done() && !worker->error().empty()) throw Error("label: generating completions failed: " + worker->error());
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  server.stop();
}

CompleteFn policy_completer(std::shared_ptr<LoadedModel> policy, int64_t k, int64_t max_new_tokens, double temperature,
                            uint64_t seed) {
  check(policy && policy->tokenizer, "label: the model has no tokenizer");
  return [policy, k, max_new_tokens, temperature, seed](const std::vector<std::string>& prompts) {
    const Tokenizer& tok = *policy->tokenizer;
    std::vector<std::vector<int32_t>> ids;
    for (const auto& p : prompts)
      for (int64_t j = 0; j < k; ++j) ids.push_back(encode_prompt(tok, p));
    GenerateOptions g;
    g.max_new_tokens = max_new_tokens;
    g.sampling.temperature = static_cast<float>(temperature);
    // Seeded by the batch's first prompt: a rerun over the same prompts samples the same texts.
    g.seed = seed ^ std::hash<std::string>{}(prompts.front());
    const auto gens = generate(policy->model, tok, ids, g);
    std::vector<std::vector<std::string>> out(prompts.size());
    for (size_t i = 0; i < gens.size(); ++i) out[i / k].push_back(gens[i].text);
    return out;
  };
}

}  // namespace rlhf
