#include "apps/rag.h"

#include <algorithm>
#include <sstream>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/io.h"
#include "core/sqlite.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

using sqlite::exec;
using sqlite::Stmt;
using sqlite::Transaction;

namespace {

constexpr const char* kFormat = "rlhf-rag";
constexpr int kVersion = 1;
constexpr double kRrfK = 60;  // reciprocal-rank fusion's constant (Cormack et al. 2009)

// chunks.rid is the rowid of the chunk's row in chunks_fts too.
const char* kSchema = R"SQL(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL,
                                     settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(rid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL,
                                  n INTEGER NOT NULL, text TEXT NOT NULL, embedding BLOB);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(text, title, tokenize='porter unicode61 remove_diacritics 2');
)SQL";

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t a = s.find_first_not_of(ws);
  return a == std::string::npos ? "" : s.substr(a, s.find_last_not_of(ws) - a + 1);
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

}  // namespace

// ---- documents and chunks ----------------------------------------------------------------

std::vector<RagDoc> read_docs(const fs::path& path) {
  std::vector<RagDoc> docs;
  if (fs::is_directory(path)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::recursive_directory_iterator(path)) {
      const auto ext = e.path().extension();
      if (e.is_regular_file() && (ext == ".txt" || ext == ".md")) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      auto rel = fs::relative(f, path);
      docs.push_back({rel.replace_extension().generic_string(), "", valid_utf8(read_file(f))});
    }
  } else {
    std::istringstream in(read_file(path));
    std::string line;
    for (int64_t no = 1; std::getline(in, line); ++no) {
      if (trim(line).empty()) continue;
      const std::string where = path.string() + ":" + std::to_string(no) + ": ";
      auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      check(j.is_object(), where + "not a JSON object");
      check(j.contains("id") && (j["id"].is_string() || j["id"].is_number_integer()), where + "needs an `id` (string)");
      check(j.contains("text") && j["text"].is_string(), where + "needs a `text` (string)");
      check(!j.contains("title") || j["title"].is_string(), where + "`title` must be a string");
      docs.push_back({j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump(),
                      valid_utf8(j.value("title", "")), valid_utf8(j["text"].get<std::string>())});
    }
  }
  check(!docs.empty(), path.string() + ": no documents (a folder of .txt/.md files or JSONL with id and text)");
  check(std::any_of(docs.begin(), docs.end(), [](const RagDoc& d) { return !trim(d.text).empty(); }),
        path.string() + ": the documents hold no text");
  std::set<std::string> seen;
  for (const auto& d : docs) check(seen.insert(d.id).second, path.string() + ": document id '" + d.id + "' twice");
  return docs;
}

std::vector<std::string> chunk_text(const std::string& text, size_t chunk_chars, size_t overlap) {
  check(chunk_chars > 0, "chunk_chars must be > 0");
  check(overlap < chunk_chars, "overlap must be smaller than chunk_chars");
  // Work in characters: at[c] is the byte offset of character c (at[n] = the end), so every
  // cut falls between characters.
  std::vector<size_t> at;
  for (size_t i = 0; i < text.size(); i += utf8::step(text, i).len) at.push_back(i);
  const size_t n = at.size();
  at.push_back(text.size());
  auto ch = [&](size_t c) { return text[at[c]]; };  // a character's first byte
  auto space = [&](size_t c) { return ch(c) == ' ' || ch(c) == '\n' || ch(c) == '\t' || ch(c) == '\r'; };
  auto paragraph = [&](size_t c) { return c >= 2 && ch(c - 1) == '\n' && ch(c - 2) == '\n'; };
  auto sentence = [&](size_t c) {
    return ch(c - 1) == '\n' || (c >= 2 && space(c - 1) && (ch(c - 2) == '.' || ch(c - 2) == '!' || ch(c - 2) == '?'));
  };
  auto word = [&](size_t c) { return space(c - 1); };

  std::vector<std::string> out;
  for (size_t start = 0; start < n;) {
    size_t end = std::min(start + chunk_chars, n);
    if (end < n) {
      // A cut c ends the piece before character c; look for the best in the second half.
      const size_t lo = start + chunk_chars / 2;
      auto last = [&](auto&& ok) -> size_t {
        for (size_t c = end; c > lo; --c)
          if (ok(c)) return c;
        return 0;
      };
      size_t cut = last(paragraph);
      if (!cut) cut = last(sentence);
      if (!cut) cut = last(word);
      if (cut) end = cut;
    }
    auto piece = trim(text.substr(at[start], at[end] - at[start]));
    if (!piece.empty()) out.push_back(std::move(piece));
    if (end == n) break;
    size_t next = std::max(start + 1, end > overlap ? end - overlap : 0);
    size_t w = next;  // on to a word start, if the overlap holds one
    while (w < end && !(space(w - 1) && !space(w))) ++w;
    start = w < end ? w : next;
  }
  return out;
}

std::string fts5_query(const std::string& text) {
  std::string q, w;
  auto flush = [&] {
    if (w.empty()) return;
    q += (q.empty() ? "\"" : " OR \"") + w + "\"";
    w.clear();
  };
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80 || std::isalnum(u)) w += c;  // a quote can never be part of a word
    else flush();
  }
  flush();
  return q;
}

torch::Tensor embed_texts(LoadedModel& lm, const std::vector<std::string>& texts, int64_t batch) {
  check(lm.tokenizer != nullptr, "the embedding model has no tokenizer");
  check(batch >= 1, "the embedding batch must be >= 1");
  c10::InferenceMode guard;
  const Tokenizer& tok = *lm.tokenizer;
  const int64_t max_len = lm.config.max_position_embeddings;
  std::vector<torch::Tensor> out;
  for (size_t b0 = 0; b0 < texts.size(); b0 += batch) {
    const size_t b1 = std::min(texts.size(), b0 + static_cast<size_t>(batch));
    std::vector<std::vector<int32_t>> rows;
    std::vector<int64_t> first;  // the first pooled position: 1 past a BOS (its state is the same for every text)
    int64_t T = 1;
    for (size_t i = b0; i < b1; ++i) {
      auto ids = encode_prompt(tok, texts[i]);
      if (ids.empty()) ids.push_back(training_pad_id(tok));  // no BOS and no text: something to pool
      if (static_cast<int64_t>(ids.size()) > max_len) ids.resize(max_len);
      first.push_back(ids.size() > 1 && ids[0] == tok.bos_id() ? 1 : 0);
      T = std::max<int64_t>(T, ids.size());
      rows.push_back(std::move(ids));
    }
    const int64_t B = rows.size();
    // Right padding: real tokens keep positions 0.., and padding after them changes nothing
    // before it (causal), so a text's vector is the same alone or in any batch.
    auto tokens = torch::full({B, T}, training_pad_id(tok), torch::kLong);  // (B, T)
    auto mask = torch::zeros({B, T}, torch::kLong);                          // (B, T) 1 = real
    auto pool = torch::zeros({B, T}, torch::kFloat);                         // (B, T) 1 = pooled
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = rows[b].size();
      tokens[b].slice(0, 0, L).copy_(torch::tensor(std::vector<int64_t>(rows[b].begin(), rows[b].end())));
      mask[b].slice(0, 0, L).fill_(1);
      pool[b].slice(0, first[b], L).fill_(1);
    }
    const auto dev = lm.model->device();
    auto h = lm.model->hidden_states(tokens.to(dev), {}, mask.to(dev)).to(torch::kFloat).cpu();  // (B, T, C)
    auto mean = (h * pool.unsqueeze(-1)).sum(1) / pool.sum(1, /*keepdim=*/true);              // (B, C)
    out.push_back(torch::nn::functional::normalize(mean, torch::nn::functional::NormalizeFuncOptions().dim(1)));
  }
  if (out.empty()) return torch::zeros({0, lm.config.hidden_size}, torch::kFloat);
  return torch::cat(out);  // (N, C)
}

// ---- the index ----------------------------------------------------------------------------

RagIndex::RagIndex(const fs::path& path, bool create, const LoadOptions& embed_load)
    : path_(path), embed_load_(embed_load) {
  check(create || fs::exists(path), path.string() + ": no such index (build one with rlhf rag index)");
  if (create && path.has_parent_path()) fs::create_directories(path.parent_path());
  const int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(path.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    throw Error(path.string() + ": cannot open the index: " + msg);
  }
  try {
    sqlite3_busy_timeout(db_, 10000);
    bool any = false, ours = false;
    {
      Stmt s(db_, "SELECT name FROM sqlite_master WHERE type='table'");
      while (s.step()) {
        any = true;
        ours |= s.text(0) == "meta";
      }
    }
    if (ours) ours = meta("format") == kFormat;
    check(ours || (create && !any), "no rlhf-rag metadata");
    if (!any) {
      exec(db_, kSchema);
      set_meta("format", kFormat);
      set_meta("version", std::to_string(kVersion));
    }
    const auto v = meta("version");
    check(v == std::to_string(kVersion), "version " + v + ", this build reads " + std::to_string(kVersion));
  } catch (const std::exception& e) {
    sqlite3_close(db_);
    std::string what = e.what();
    if (what.rfind("sqlite: ", 0) == 0) what = what.substr(8);
    throw Error(path.string() + ": not a RAG index of rlhf (" + what + ")");
  }
}

RagIndex::~RagIndex() { sqlite3_close(db_); }

std::string RagIndex::meta(const std::string& key) const {
  Stmt s(db_, "SELECT value FROM meta WHERE key = ?");
  s.bind(1, key);
  return s.step() ? s.text(0) : "";
}

void RagIndex::set_meta(const std::string& key, const std::string& value) {
  Stmt(db_, "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
      .bind(1, key)
      .bind(2, value)
      .step();
}

std::string RagIndex::embed_model() const { return meta("embed_model"); }

int64_t RagIndex::chunk_count() const {
  Stmt s(db_, "SELECT count(*) FROM chunks");
  s.step();
  return s.i64(0);
}

LoadedModel& RagIndex::embedder(const std::string& model_path) {
  if (!embedder_) {
    embedder_ = std::make_unique<LoadedModel>(load_model(model_path, embed_load_));
    check(embedder_->tokenizer != nullptr, model_path + ": the embedding model has no tokenizer");
  }
  return *embedder_;
}

IndexStats RagIndex::add(const std::vector<RagDoc>& docs, const IndexOptions& opt) {
  check(opt.chunk_chars > 0 && opt.overlap < opt.chunk_chars,
        "--chunk-chars must be > 0 and --overlap smaller than it (got " + std::to_string(opt.chunk_chars) + ", " +
            std::to_string(opt.overlap) + ")");
  // The embedding model is the index's for life: a query must be embedded as its chunks were.
  std::string model = embed_model();
  if (!opt.embed_model.empty()) {
    const auto given = fs::absolute(opt.embed_model).lexically_normal().string();
    check(model.empty() || model == given,
          path_.string() + ": its chunks are embedded with " + model + ", not " + given + "; build a new index");
    check(!model.empty() || chunk_count() == 0,
          path_.string() + ": its chunks have no embeddings; build a new index to use --embed-model");
    model = given;
  }
  const std::string settings = "chunk_chars=" + std::to_string(opt.chunk_chars) +
                               " overlap=" + std::to_string(opt.overlap) + " embed_model=" + model;
  // 1. chunk what changed
  struct NewChunk {
    const RagDoc* doc;
    int64_t n;
    std::string text;
  };
  IndexStats stats;
  std::vector<const RagDoc*> changed;
  std::vector<NewChunk> chunks;
  for (const auto& d : docs) {
    ++stats.docs;
    Stmt s(db_, "SELECT 1 FROM documents WHERE id = ? AND title = ? AND text = ? AND settings = ?");
    s.bind(1, d.id).bind(2, d.title).bind(3, d.text).bind(4, settings);
    if (s.step()) {
      ++stats.unchanged;
      continue;
    }
    changed.push_back(&d);
    auto pieces = chunk_text(d.text, opt.chunk_chars, opt.overlap);
    for (size_t i = 0; i < pieces.size(); ++i) chunks.push_back({&d, static_cast<int64_t>(i), std::move(pieces[i])});
  }
  stats.chunks = chunks.size();
  // 2. embed them (before the transaction: the model's time holds no lock)
  torch::Tensor emb;  // (N, C) float32
  if (!model.empty() && !chunks.empty()) {
    std::vector<std::string> texts;
    for (const auto& c : chunks) texts.push_back(c.text);
    emb = embed_texts(embedder(model), texts, opt.embed_batch).contiguous();
  }
  // 3. replace the changed documents' chunks, all or nothing
  Transaction tx(db_);
  for (const RagDoc* d : changed) {
    Stmt(db_, "DELETE FROM chunks_fts WHERE rowid IN (SELECT rid FROM chunks WHERE doc = ?)").bind(1, d->id).step();
    Stmt(db_, "DELETE FROM chunks WHERE doc = ?").bind(1, d->id).step();
    Stmt(db_, "INSERT OR REPLACE INTO documents(id, title, text, settings) VALUES(?, ?, ?, ?)")
        .bind(1, d->id)
        .bind(2, d->title)
        .bind(3, d->text)
        .bind(4, settings)
        .step();
  }
  Stmt ins(db_, "INSERT INTO chunks(id, doc, n, text, embedding) VALUES(?, ?, ?, ?, ?)");
  Stmt fts(db_, "INSERT INTO chunks_fts(rowid, text, title) VALUES(?, ?, ?)");
  for (size_t i = 0; i < chunks.size(); ++i) {
    const auto& c = chunks[i];
    ins.bind(1, c.doc->id + "#" + std::to_string(c.n)).bind(2, c.doc->id).bind(3, c.n).bind(4, c.text);
    if (emb.defined()) ins.bind(5, emb[i].data_ptr<float>(), emb.size(1) * sizeof(float));
    ins.step();
    ins.reset();
    fts.bind(1, static_cast<int64_t>(sqlite3_last_insert_rowid(db_))).bind(2, c.text).bind(3, c.doc->title).step();
    fts.reset();
  }
  if (!model.empty()) set_meta("embed_model", model);
  tx.commit();
  return stats;
}

std::vector<RagHit> RagIndex::bm25(const std::string& query, int n) {
  const auto match = fts5_query(query);
  std::vector<RagHit> hits;
  if (match.empty()) return hits;
  Stmt s(db_, R"SQL(SELECT c.id, c.doc, c.text, bm25(chunks_fts) AS rank FROM chunks_fts
                    JOIN chunks c ON c.rid = chunks_fts.rowid
                    WHERE chunks_fts MATCH ? ORDER BY rank, c.rid LIMIT ?)SQL");
  s.bind(1, match).bind(2, static_cast<int64_t>(n));
  while (s.step()) hits.push_back({s.text(0), s.text(1), -s.f64(3), s.text(2)});  // bm25(): lower is better
  return hits;
}

std::vector<RagHit> RagIndex::nearest(const std::string& query, int n) {
  auto q = embed_texts(embedder(embed_model()), {query})[0];  // (C)
  std::vector<int64_t> rids;
  std::vector<float> all;
  Stmt s(db_, "SELECT rid, embedding FROM chunks WHERE embedding IS NOT NULL ORDER BY rid");
  while (s.step()) {
    check(s.bytes(1) == q.numel() * sizeof(float), path_.string() + ": an embedding of another size than the model's");
    rids.push_back(s.i64(0));
    const auto* p = static_cast<const float*>(s.blob(1));
    all.insert(all.end(), p, p + q.numel());
  }
  std::vector<RagHit> hits;
  if (rids.empty()) return hits;
  auto m = torch::from_blob(all.data(), {static_cast<int64_t>(rids.size()), q.numel()}, torch::kFloat);  // (N, C)
  auto [score, idx] = torch::matmul(m, q).topk(std::min<int64_t>(n, rids.size()));                         // (n)
  Stmt row(db_, "SELECT id, doc, text FROM chunks WHERE rid = ?");
  for (int64_t i = 0; i < idx.numel(); ++i) {
    row.bind(1, rids[idx[i].item<int64_t>()]);
    row.step();
    hits.push_back({row.text(0), row.text(1), score[i].item<double>(), row.text(2)});
    row.reset();
  }
  return hits;
}

std::vector<RagHit> RagIndex::search(const std::string& query, int k, bool dense) {
  check(k >= 1, "k must be >= 1");
  if (!dense) return bm25(query, k);
  check(!embed_model().empty(), path_.string() + ": the index has no embeddings (build it with --embed-model)");
  const int n = 4 * k;
  std::vector<RagHit> fused;
  std::unordered_map<std::string, size_t> at;
  for (auto list : {bm25(query, n), nearest(query, n)})
    for (size_t r = 0; r < list.size(); ++r) {
      auto [it, fresh] = at.emplace(list[r].id, fused.size());
      if (fresh) {
        fused.push_back(list[r]);
        fused.back().score = 0;
      }
      fused[it->second].score += 1.0 / (kRrfK + static_cast<double>(r + 1));
    }
  std::stable_sort(fused.begin(), fused.end(), [](const RagHit& a, const RagHit& b) { return a.score > b.score; });
  if (fused.size() > static_cast<size_t>(k)) fused.resize(k);
  return fused;
}

// ---- prompts and answers ------------------------------------------------------------------

const char* const kDefaultRagTemplate =
    "Answer the question in one line using the numbered context passages. Cite the passages you used "
    "by their numbers in brackets, like [1].\n"
    "\n"
    "Context:\n"
    "[1] The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n"
    "[2] The Colosseum in Rome could hold about 50,000 spectators.\n"
    "Question: When was the Eiffel Tower completed?\n"
    "Answer: It was completed in 1889 [1].\n"
    "\n"
    "Context:\n"
    "{context}\n"
    "Question: {question}\n"
    "Answer:";

std::string fill_template(const std::string& tmpl, const std::map<std::string, std::string>& values) {
  std::string out;
  for (size_t i = 0; i < tmpl.size();) {
    bool replaced = false;
    if (tmpl[i] == '{')
      for (const auto& [name, value] : values)
        if (tmpl.compare(i + 1, name.size(), name) == 0 && i + 1 + name.size() < tmpl.size() &&
            tmpl[i + 1 + name.size()] == '}') {
          out += value;
          i += name.size() + 2;
          replaced = true;
          break;
        }
    if (!replaced) out += tmpl[i++];
  }
  return out;
}

RagPrompt rag_prompt(RagIndex& index, const std::string& question, const RagOptions& options) {
  RagPrompt p;
  p.retrieved = index.search(question, options.k, options.dense);
  std::string context;
  for (size_t i = 0; i < p.retrieved.size(); ++i)
    context += (i ? "\n[" : "[") + std::to_string(i + 1) + "] " + one_line(p.retrieved[i].text);
  p.prompt = fill_template(options.prompt_template, {{"question", question}, {"context", context}});
  return p;
}

RagAnswer parse_rag_answer(const std::string& raw, const std::vector<RagHit>& retrieved) {
  RagAnswer a;
  a.raw = raw;
  a.retrieved = retrieved;
  const std::string line = raw.substr(0, raw.find('\n'));
  std::string out;
  auto tight = [](char c) { return c == '.' || c == ',' || c == ';' || c == ':' || c == '!' || c == '?' || c == ' '; };
  for (size_t i = 0; i < line.size();) {
    const size_t close = line[i] == '[' ? line.find(']', i) : std::string::npos;
    if (close != std::string::npos && close - i >= 2 && close - i <= 4 &&
        std::all_of(line.begin() + i + 1, line.begin() + close, [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      const size_t v = std::stoul(line.substr(i + 1, close - i - 1));
      if (v >= 1 && v <= retrieved.size()) {
        const auto& id = retrieved[v - 1].id;
        if (std::find(a.citations.begin(), a.citations.end(), id) == a.citations.end()) a.citations.push_back(id);
        // Drop the marker's space too: "in 1889 [1]." -> "in 1889.", "A [1] B" -> "A B".
        while (!out.empty() && out.back() == ' ') out.pop_back();
        i = close + 1;
        if (!out.empty() && i < line.size() && !tight(line[i])) out += ' ';
        continue;
      }
    }
    out += line[i++];
  }
  a.answer = trim(out);
  return a;
}

std::vector<RagAnswer> rag_ask(Llm& llm, RagIndex& index, const std::vector<std::string>& questions,
                               const RagOptions& options, CompletionParams params) {
  std::vector<RagPrompt> prompts;
  std::vector<std::string> texts;
  for (const auto& q : questions) {
    prompts.push_back(rag_prompt(index, q, options));
    texts.push_back(prompts.back().prompt);
  }
  if (std::find(params.stop.begin(), params.stop.end(), "\n") == params.stop.end()) params.stop.push_back("\n");
  params.n = 1;
  auto outs = llm.complete(texts, params);
  check(outs.size() == questions.size(), llm.describe() + ": " + std::to_string(outs.size()) + " completions for " +
                                             std::to_string(questions.size()) + " prompts");
  std::vector<RagAnswer> answers;
  for (size_t i = 0; i < questions.size(); ++i)
    answers.push_back(parse_rag_answer(outs[i].empty() ? "" : outs[i][0].text, prompts[i].retrieved));
  return answers;
}

}  // namespace rlhf
