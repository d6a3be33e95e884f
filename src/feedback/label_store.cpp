#include "feedback/label_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "core/sqlite.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

namespace {

using sqlite::exec;
using sqlite::Stmt;
using sqlite::Transaction;

constexpr int kSchemaVersion = 1;
constexpr double kLeaseSeconds = 30 * 60;  // a task shown and not submitted holds its slot this long
constexpr size_t kMaxNote = 4000;
constexpr double kDefaultSessionSeconds = 12 * 3600;

const char* kSchema = R"SQL(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS prompts(id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS completions(
  id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), idx INTEGER NOT NULL,
  text TEXT NOT NULL, UNIQUE(prompt_id, idx));
CREATE TABLE IF NOT EXISTS labelers(name TEXT PRIMARY KEY, token TEXT NOT NULL);
-- token: the one signed in with; the session ends when it is no longer the labeler's.
CREATE TABLE IF NOT EXISTS sessions(id TEXT PRIMARY KEY, labeler TEXT NOT NULL, token TEXT NOT NULL DEFAULT '',
                                    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments(
  prompt_id INTEGER NOT NULL REFERENCES prompts(id), labeler TEXT NOT NULL, shown TEXT NOT NULL,
  created REAL NOT NULL, submitted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(prompt_id, labeler));
CREATE INDEX IF NOT EXISTS assignments_by_labeler ON assignments(labeler, submitted);
CREATE TABLE IF NOT EXISTS submissions(
  id INTEGER PRIMARY KEY, prompt_id INTEGER NOT NULL REFERENCES prompts(id), labeler TEXT NOT NULL,
  ranking TEXT NOT NULL, flags TEXT NOT NULL, note TEXT NOT NULL, created REAL NOT NULL,
  UNIQUE(prompt_id, labeler));
)SQL";

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool equal_tokens(const std::string& a, const std::string& b) {  // without an early exit on the first difference
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string random_hex(size_t bytes) {
  std::random_device rd;  // /dev/urandom on Linux
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < bytes; ++i) {
    const unsigned v = rd() & 0xff;
    s += hex[v >> 4];
    s += hex[v & 15];
  }
  return s;
}

// Tier index of every item.
std::map<int64_t, size_t> tier_of(const std::vector<std::vector<int64_t>>& tiers) {
  std::map<int64_t, size_t> r;
  for (size_t t = 0; t < tiers.size(); ++t)
    for (int64_t id : tiers[t]) r[id] = t;
  return r;
}

// Concordant/discordant counts over the items both rankings hold, and untied pairs in each.
struct PairCounts {
  int64_t concordant = 0, discordant = 0, untied_a = 0, untied_b = 0;
};

PairCounts count_pairs(const std::vector<std::vector<int64_t>>& a, const std::vector<std::vector<int64_t>>& b) {
  const auto ta = tier_of(a), tb = tier_of(b);
  std::vector<int64_t> items;
  for (const auto& [id, t] : ta)
    if (tb.count(id)) items.push_back(id);
  PairCounts c;
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t j = i + 1; j < items.size(); ++j) {
      const auto da = static_cast<int64_t>(ta.at(items[i])) - static_cast<int64_t>(ta.at(items[j]));
      const auto db = static_cast<int64_t>(tb.at(items[i])) - static_cast<int64_t>(tb.at(items[j]));
      c.untied_a += da != 0;
      c.untied_b += db != 0;
      if (da * db > 0) ++c.concordant;
      if (da * db < 0) ++c.discordant;
    }
  return c;
}

// Canonical JSON of a ranking (ids sorted inside a tie) and of flags (sorted, unique), so a
// resubmission compares equal however the client ordered them.
json canonical_ranking(std::vector<std::vector<int64_t>> tiers) {
  json r = json::array();
  for (auto& t : tiers) {
    std::sort(t.begin(), t.end());
    r.push_back(t);
  }
  return r;
}

json canonical_flags(const std::map<int64_t, std::vector<std::string>>& flags) {
  json r = json::object();
  for (const auto& [id, fl] : flags) {
    std::set<std::string> s(fl.begin(), fl.end());
    if (!s.empty()) r[std::to_string(id)] = std::vector<std::string>(s.begin(), s.end());
  }
  return r;
}

}  // namespace

const std::vector<std::string>& label_flags() {
  static const std::vector<std::string> flags = {
      "unhelpful",                              // helpful
      "toxic", "aggressive", "dangerous",       // harmless: toxic language, aggressive voice, dangerous detail
      "made_up_facts", "overconfident",         // honest: made-up facts, confident where it should not be
  };
  return flags;
}

double kendall_tau_b(const std::vector<std::vector<int64_t>>& a, const std::vector<std::vector<int64_t>>& b) {
  const auto c = count_pairs(a, b);
  if (c.untied_a == 0 || c.untied_b == 0) return std::nan("");
  return static_cast<double>(c.concordant - c.discordant) / std::sqrt(static_cast<double>(c.untied_a) * c.untied_b);
}

double pairwise_agreement(const std::vector<std::vector<int64_t>>& a, const std::vector<std::vector<int64_t>>& b,
                          int64_t* pairs) {
  const auto c = count_pairs(a, b);
  if (pairs) *pairs = c.concordant + c.discordant;
  return c.concordant + c.discordant == 0 ? std::nan("")
                                          : static_cast<double>(c.concordant) / static_cast<double>(c.concordant + c.discordant);
}

LabelStore::LabelStore(const fs::path& path) : path_(path) {
  if (path.has_parent_path() && !path.parent_path().empty()) fs::create_directories(path.parent_path());
  if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw Error(path.string() + ": cannot open the labeling database: " + msg);
  }
  try {
    sqlite3_busy_timeout(db_, 10000);
    // WAL: readers never block the writer; FULL: a commit is on disk when it returns.
    exec(db_, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
    bool foreign = false;
    {
      Stmt s(db_, "SELECT name FROM sqlite_master WHERE type='table'");
      bool any = false, has_meta = false;
      while (s.step()) {
        any = true;
        has_meta |= s.text(0) == "meta";
      }
      foreign = any && !has_meta;
    }
    check(!foreign, "it holds other tables");
    // Sessions from before they recorded their token cannot be checked against it: they go
    // (everyone signs in again), the table is made anew below.
    bool untokened_sessions = false;
    {
      Stmt s(db_, R"SQL(SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type='table' AND name='sessions')
                        AND NOT EXISTS (SELECT 1 FROM pragma_table_info('sessions') WHERE name='token'))SQL");
      s.step();
      untokened_sessions = s.i64(0) == 1;
    }
    if (untokened_sessions) exec(db_, "DROP TABLE sessions");
    exec(db_, kSchema);
    auto v = meta("schema_version");
    if (!v) set_meta("schema_version", std::to_string(kSchemaVersion));
    else check(std::stoi(*v) == kSchemaVersion, "schema version " + *v + ", this build reads " + std::to_string(kSchemaVersion));
  } catch (const std::exception& e) {
    sqlite3_close(db_);
    std::string what = e.what();
    if (what.rfind("sqlite: ", 0) == 0) what = what.substr(8);
    throw Error(path.string() + ": not a labeling database (" + what + ")");
  }
}

LabelStore::~LabelStore() { sqlite3_close(db_); }

std::optional<std::string> LabelStore::meta(const std::string& key) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT value FROM meta WHERE key=?");
  s.bind(1, key);
  if (s.step()) return s.text(0);
  return std::nullopt;
}

void LabelStore::set_meta(const std::string& key, const std::string& value) {
  std::lock_guard lk(mu_);
  Stmt(db_, "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value")
      .bind(1, key)
      .bind(2, value)
      .step();
}

int64_t LabelStore::labelers_per_prompt() {
  auto v = meta("labelers_per_prompt");
  return v ? std::max<int64_t>(1, std::stoll(*v)) : 1;
}

int64_t LabelStore::add_prompt(const std::string& text) {
  std::lock_guard lk(mu_);
  Stmt(db_, "INSERT INTO prompts(text, created) VALUES(?, ?) ON CONFLICT(text) DO NOTHING").bind(1, text).bind(2, now_seconds()).step();
  Stmt s(db_, "SELECT id FROM prompts WHERE text=?");
  s.bind(1, text);
  s.step();
  return s.i64(0);
}

void LabelStore::add_completions(int64_t prompt_id, const std::vector<std::string>& texts) {
  check(texts.size() >= 2, "a prompt needs at least 2 completions to rank, got " + std::to_string(texts.size()));
  std::lock_guard lk(mu_);
  Transaction tx(db_);
  {
    Stmt s(db_, "SELECT COUNT(*) FROM completions WHERE prompt_id=?");
    s.bind(1, prompt_id).step();
    check(s.i64(0) == 0, "prompt " + std::to_string(prompt_id) + " already has completions");
  }
  for (size_t i = 0; i < texts.size(); ++i) {
    Stmt(db_, "INSERT INTO completions(prompt_id, idx, text) VALUES(?, ?, ?)")
        .bind(1, prompt_id)
        .bind(2, static_cast<int64_t>(i))
        .bind(3, texts[i])
        .step();
  }
  tx.commit();
}

int64_t LabelStore::completion_count(int64_t prompt_id) {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM completions WHERE prompt_id=?");
  s.bind(1, prompt_id).step();
  return s.i64(0);
}

std::vector<std::pair<int64_t, std::string>> LabelStore::prompts_without_completions() {
  std::lock_guard lk(mu_);
  Stmt s(db_,
         "SELECT id, text FROM prompts p WHERE NOT EXISTS (SELECT 1 FROM completions c WHERE c.prompt_id=p.id) ORDER BY id");
  std::vector<std::pair<int64_t, std::string>> r;
  while (s.step()) r.emplace_back(s.i64(0), s.text(1));
  return r;
}

namespace {

void check_labeler(const std::string& name, const std::string& token) {
  check(!name.empty() && name.size() <= 64, "a labeler name has 1 to 64 characters");
  check(token.size() >= 4, "labeler '" + name + "': the access token is too short (4 characters at least)");
  for (unsigned char c : name) check(c >= 0x20 && c != 0x7f, "a labeler name has no control characters");
}

void upsert_labeler(sqlite3* db, const std::string& name, const std::string& token) {
  Stmt(db, "INSERT INTO labelers(name, token) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET token=excluded.token")
      .bind(1, name)
      .bind(2, token)
      .step();
}

}  // namespace

void LabelStore::set_labeler(const std::string& name, const std::string& token) {
  check_labeler(name, token);
  std::lock_guard lk(mu_);
  upsert_labeler(db_, name, token);
}

void LabelStore::set_labelers(const std::vector<std::pair<std::string, std::string>>& labelers) {
  for (const auto& [name, token] : labelers) check_labeler(name, token);
  std::lock_guard lk(mu_);
  Transaction tx(db_);
  exec(db_, "DELETE FROM labelers");
  for (const auto& [name, token] : labelers) upsert_labeler(db_, name, token);
  tx.commit();
}

std::string LabelStore::sign_in(const std::string& name, const std::string& token) {
  if (name.empty() || name.size() > 64) throw LabelError(400, "a labeler name has 1 to 64 characters");
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f) throw LabelError(400, "a labeler name has no control characters");
  const auto shared = meta("shared_token");
  const double lifetime = session_seconds();
  std::lock_guard lk(mu_);
  bool ok = false;
  {
    Stmt s(db_, "SELECT token FROM labelers WHERE name=?");
    s.bind(1, name);
    if (s.step()) ok = equal_tokens(s.text(0), token);            // a named labeler needs their own token
    else ok = shared && !shared->empty() && equal_tokens(*shared, token);
  }
  if (!ok) throw LabelError(401, "wrong name or access token");
  const std::string id = random_hex(16);
  const double now = now_seconds();
  Stmt(db_, "DELETE FROM sessions WHERE created < ?").bind(1, now - lifetime).step();
  Stmt(db_, "INSERT INTO sessions(id, labeler, token, created) VALUES(?, ?, ?, ?)")
      .bind(1, id)
      .bind(2, name)
      .bind(3, token)
      .bind(4, now)
      .step();
  return id;
}

double LabelStore::session_seconds() {
  const auto v = meta("session_seconds");
  return v ? std::stod(*v) : kDefaultSessionSeconds;
}

std::string LabelStore::session_labeler(const std::string& session) {
  const auto shared = meta("shared_token");
  const double lifetime = session_seconds();
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT s.labeler, s.token, s.created, l.token FROM sessions s LEFT JOIN labelers l ON l.name = s.labeler WHERE s.id=?");
  s.bind(1, session);
  if (!s.step()) throw LabelError(401, "not signed in (unknown or missing session)");
  if (now_seconds() - s.f64(2) > lifetime) throw LabelError(401, "the sign-in has expired; sign in again");
  // The labeler's token now: their own, else the shared one.
  const std::optional<std::string> current = s.null(3) ? shared : std::optional<std::string>(s.text(3));
  if (!current || current->empty() || !equal_tokens(*current, s.text(1)))
    throw LabelError(401, "the access token has changed since this sign-in; sign in again");
  return s.text(0);
}

std::optional<LabelTask> LabelStore::next_task(const std::string& labeler) {
  const int64_t per_prompt = labelers_per_prompt();
  std::lock_guard lk(mu_);
  Transaction tx(db_);
  LabelTask t;
  std::string shown;
  {
    Stmt s(db_, "SELECT prompt_id, shown FROM assignments WHERE labeler=? AND submitted=0 ORDER BY created, prompt_id LIMIT 1");
    s.bind(1, labeler);
    if (s.step()) {
      t.prompt_id = s.i64(0);
      shown = s.text(1);
    }
  }
  const double now = now_seconds();
  if (shown.empty()) {
    Stmt s(db_, R"SQL(
      SELECT p.id FROM prompts p
      WHERE EXISTS (SELECT 1 FROM completions c WHERE c.prompt_id = p.id)
        AND NOT EXISTS (SELECT 1 FROM assignments a WHERE a.prompt_id = p.id AND a.labeler = ?1)
        AND (SELECT COUNT(*) FROM assignments a
             WHERE a.prompt_id = p.id AND (a.submitted = 1 OR a.created > ?2)) < ?3
      ORDER BY p.id LIMIT 1)SQL");
    s.bind(1, labeler).bind(2, now - kLeaseSeconds).bind(3, per_prompt);
    if (!s.step()) return std::nullopt;
    t.prompt_id = s.i64(0);
    // Shown in a shuffled order (a function of labeler and prompt) against position bias.
    std::vector<int64_t> ids;
    {
      Stmt c(db_, "SELECT id FROM completions WHERE prompt_id=? ORDER BY idx");
      c.bind(1, t.prompt_id);
      while (c.step()) ids.push_back(c.i64(0));
    }
    std::seed_seq seq(labeler.begin(), labeler.end());
    std::mt19937_64 rng(seq);
    rng.discard(static_cast<unsigned long long>(t.prompt_id % 1000));
    std::shuffle(ids.begin(), ids.end(), rng);
    shown = json(ids).dump();
    Stmt(db_, "INSERT INTO assignments(prompt_id, labeler, shown, created) VALUES(?, ?, ?, ?)")
        .bind(1, t.prompt_id)
        .bind(2, labeler)
        .bind(3, shown)
        .bind(4, now)
        .step();
  }
  {
    Stmt s(db_, "SELECT text FROM prompts WHERE id=?");
    s.bind(1, t.prompt_id).step();
    t.prompt = s.text(0);
  }
  for (int64_t id : json::parse(shown).get<std::vector<int64_t>>()) {
    Stmt s(db_, "SELECT text FROM completions WHERE id=?");
    s.bind(1, id).step();
    t.completion_ids.push_back(id);
    t.completions.push_back(s.text(0));
  }
  tx.commit();
  return t;
}

LabelStore::SubmitResult LabelStore::submit(const LabelSubmission& sub) {
  const auto pid = std::to_string(sub.prompt_id);
  if (sub.note.size() > kMaxNote) throw LabelError(400, "the note is longer than " + std::to_string(kMaxNote) + " bytes");
  std::lock_guard lk(mu_);
  Transaction tx(db_);
  {
    Stmt s(db_, "SELECT 1 FROM prompts WHERE id=?");
    s.bind(1, sub.prompt_id);
    if (!s.step()) throw LabelError(404, "unknown prompt " + pid);
  }
  {
    Stmt s(db_, "SELECT 1 FROM assignments WHERE prompt_id=? AND labeler=?");
    s.bind(1, sub.prompt_id).bind(2, sub.labeler);
    if (!s.step()) throw LabelError(409, "prompt " + pid + " was not shown to " + sub.labeler);
  }
  // A permutation of exactly the completions shown: every id once, none missing, none extra.
  std::set<int64_t> shown;
  {
    Stmt s(db_, "SELECT id FROM completions WHERE prompt_id=?");
    s.bind(1, sub.prompt_id);
    while (s.step()) shown.insert(s.i64(0));
  }
  std::set<int64_t> seen;
  for (const auto& tier : sub.ranking) {
    if (tier.empty()) throw LabelError(400, "ranking: empty tie group");
    for (int64_t id : tier) {
      if (!shown.count(id)) throw LabelError(400, "ranking: completion " + std::to_string(id) + " is not one of prompt " + pid + "'s");
      if (!seen.insert(id).second) throw LabelError(400, "ranking: completion " + std::to_string(id) + " appears twice");
    }
  }
  if (seen.size() != shown.size())
    throw LabelError(400, "ranking: ranks " + std::to_string(seen.size()) + " of the " + std::to_string(shown.size()) +
                              " completions shown (a ranking orders all of them)");
  if (sub.ranking.size() < 2) throw LabelError(400, "ranking: everything tied says nothing; order at least two groups");
  const auto& known = label_flags();
  for (const auto& [id, fl] : sub.flags) {
    if (!shown.count(id)) throw LabelError(400, "flags: completion " + std::to_string(id) + " is not one of prompt " + pid + "'s");
    for (const auto& f : fl)
      if (std::find(known.begin(), known.end(), f) == known.end()) throw LabelError(400, "flags: unknown flag '" + f + "'");
  }
  const std::string ranking = canonical_ranking(sub.ranking).dump(), flags = canonical_flags(sub.flags).dump();
  {
    Stmt s(db_, "SELECT ranking, flags, note FROM submissions WHERE prompt_id=? AND labeler=?");
    s.bind(1, sub.prompt_id).bind(2, sub.labeler);
    if (s.step()) {
      if (s.text(0) == ranking && s.text(1) == flags && s.text(2) == sub.note) return SubmitResult::duplicate;
      throw LabelError(409, sub.labeler + " already submitted a different ranking for prompt " + pid);
    }
  }
  Stmt(db_, "INSERT INTO submissions(prompt_id, labeler, ranking, flags, note, created) VALUES(?, ?, ?, ?, ?, ?)")
      .bind(1, sub.prompt_id)
      .bind(2, sub.labeler)
      .bind(3, ranking)
      .bind(4, flags)
      .bind(5, sub.note)
      .bind(6, now_seconds())
      .step();
  Stmt(db_, "UPDATE assignments SET submitted=1 WHERE prompt_id=? AND labeler=?").bind(1, sub.prompt_id).bind(2, sub.labeler).step();
  tx.commit();
  return SubmitResult::stored;
}

int64_t LabelStore::submission_count() {
  std::lock_guard lk(mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM submissions");
  s.step();
  return s.i64(0);
}

LabelProgress LabelStore::progress(const std::string& labeler) {
  const int64_t per_prompt = labelers_per_prompt();
  std::lock_guard lk(mu_);
  LabelProgress p;
  Stmt s(db_, R"SQL(SELECT
      (SELECT COUNT(*) FROM prompts),
      (SELECT COUNT(DISTINCT prompt_id) FROM completions),
      (SELECT COUNT(*) FROM submissions),
      (SELECT COUNT(*) FROM (SELECT prompt_id FROM submissions GROUP BY prompt_id HAVING COUNT(*) >= ?1)),
      (SELECT COUNT(*) FROM submissions WHERE labeler = ?2))SQL");
  s.bind(1, per_prompt).bind(2, labeler).step();
  p.prompts = s.i64(0);
  p.ready = s.i64(1);
  p.submissions = s.i64(2);
  p.done_prompts = s.i64(3);
  p.mine = s.i64(4);
  p.target = p.prompts * per_prompt;
  return p;
}

LabelStats LabelStore::stats() {
  std::map<int64_t, std::map<std::string, std::vector<std::vector<int64_t>>>> by_prompt;
  LabelStats st;
  {
    std::lock_guard lk(mu_);
    Stmt s(db_, "SELECT prompt_id, labeler, ranking FROM submissions ORDER BY id");
    while (s.step()) {
      by_prompt[s.i64(0)][s.text(1)] = json::parse(s.text(2)).get<std::vector<std::vector<int64_t>>>();
      ++st.counts[s.text(1)];
    }
  }
  struct Acc {
    int64_t prompts = 0, agree = 0, pairs = 0, tau_n = 0;
    double tau_sum = 0;
  };
  std::map<std::pair<std::string, std::string>, Acc> acc;
  Acc all;
  for (const auto& [pid, rankings] : by_prompt)
    for (auto a = rankings.begin(); a != rankings.end(); ++a)
      for (auto b = std::next(a); b != rankings.end(); ++b) {
        const auto c = count_pairs(a->second, b->second);
        const double tau = kendall_tau_b(a->second, b->second);
        for (Acc* x : {&acc[{a->first, b->first}], &all}) {
          ++x->prompts;
          x->agree += c.concordant;
          x->pairs += c.concordant + c.discordant;
          if (!std::isnan(tau)) {
            x->tau_sum += tau;
            ++x->tau_n;
          }
        }
      }
  auto ratio = [](double n, double d) { return d == 0 ? std::nan("") : n / d; };
  for (const auto& [names, x] : acc)
    st.pairs.push_back({names.first, names.second, x.prompts, ratio(x.agree, x.pairs), ratio(x.tau_sum, x.tau_n)});
  st.shared_prompts = all.prompts;
  st.agreement = ratio(all.agree, all.pairs);
  st.kendall_tau = ratio(all.tau_sum, all.tau_n);
  return st;
}

std::vector<Ranking> LabelStore::export_rankings() {
  std::lock_guard lk(mu_);
  std::vector<Ranking> out;
  Stmt s(db_, R"SQL(SELECT s.prompt_id, p.text, s.labeler, s.ranking, s.flags, s.note, s.created
                    FROM submissions s JOIN prompts p ON p.id = s.prompt_id ORDER BY s.id)SQL");
  while (s.step()) {
    Ranking rk;
    rk.prompt = s.text(1);
    rk.labeler = s.text(2);
    std::map<int64_t, int> index;
    {
      Stmt c(db_, "SELECT id, text FROM completions WHERE prompt_id=? ORDER BY idx");
      c.bind(1, s.i64(0));
      while (c.step()) {
        index[c.i64(0)] = static_cast<int>(rk.completions.size());
        rk.completions.push_back(c.text(1));
      }
    }
    for (const auto& tier : json::parse(s.text(3)).get<std::vector<std::vector<int64_t>>>()) {
      std::vector<int> t;
      for (int64_t id : tier) t.push_back(index.at(id));
      std::sort(t.begin(), t.end());
      rk.tiers.push_back(t);
    }
    json flags = json::array();
    for (size_t i = 0; i < rk.completions.size(); ++i) flags.push_back(json::array());
    // Named: items() refers to its json, and a temporary's would die before the loop runs.
    const json stored_flags = json::parse(s.text(4));
    for (const auto& [id, fl] : stored_flags.items()) flags[index.at(std::stoll(id))] = fl;
    rk.extra["flags"] = flags;
    if (!s.text(5).empty()) rk.extra["note"] = s.text(5);
    rk.extra["prompt_id"] = s.i64(0);
    rk.extra["submitted_at"] = s.f64(6);
    out.push_back(std::move(rk));
  }
  return out;
}

}  // namespace rlhf
