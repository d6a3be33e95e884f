// Retrieval-augmented generation: an index of documents in one SQLite file (chunks with
// overlap, FTS5 BM25, optionally each chunk's embedding by a model of ours) and the prompt
// that puts the retrieved chunks before the question. `rlhf rag`, `rlhf react` and
// `rlhf serve --rag` all retrieve through RagIndex and build prompts with rag_prompt.
//
// Dense retrieval (an index built with an embedding model, queried with dense = true): the
// candidates are the BM25 top 4k and the embedding top 4k (cosine similarity); they are
// ordered by reciprocal-rank fusion, score = sum over the two lists of 1 / (60 + rank), rank
// from 1 (Cormack et al. 2009); a chunk missing from one list gets nothing from it.
#pragma once
#include <sqlite3.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "apps/llm.h"
#include "model/model.h"

namespace rlhf {

struct RagDoc {
  std::string id;     // a folder's file: its relative path without extension
  std::string title;  // optional (JSONL `title`); searched together with the text
  std::string text;
};

// A folder of .txt/.md files (recursively, in path order) or JSONL with `id`, `text` and an
// optional `title`. Text is made valid UTF-8 (valid_utf8). Error when there is no document, or
// none holds text.
std::vector<RagDoc> read_docs(const std::filesystem::path& path);

// Cuts `text` into pieces of at most `chunk_chars` characters (code points), each starting
// up to `overlap` characters before the previous one ends. A piece ends at the last paragraph
// break in its second half, else the last sentence end (". ", "! ", "? " or a line break),
// else the last space, else after chunk_chars characters; never inside a UTF-8 character. The
// next piece starts at a word start. Pieces are trimmed of surrounding whitespace; empty
// ones are dropped.
std::vector<std::string> chunk_text(const std::string& text, size_t chunk_chars, size_t overlap);

// The FTS5 MATCH expression for free text: each word (letters, digits, anything outside
// ASCII) as a quoted string, OR-ed, so operators and punctuation in the question are plain
// text. "" when the text has no word.
std::string fts5_query(const std::string& text);

// Embeddings for retrieval: the final hidden states mean-pooled over each text's tokens
// (no BOS, no padding; at most max_position_embeddings), L2-normalised. (N, C) float32.
torch::Tensor embed_texts(LoadedModel& lm, const std::vector<std::string>& texts, int64_t batch = 16);

struct RagHit {
  std::string id;     // "{doc_id}#{n}"
  std::string doc;
  double score = 0;   // BM25: -bm25() (higher is better); dense: the fused score
  std::string text;
};

struct IndexOptions {
  size_t chunk_chars = 600;
  size_t overlap = 100;
  std::string embed_model;   // "" = the index's own (none for a new index)
  LoadOptions load;          // for the embedding model
  int64_t embed_batch = 16;
};

struct IndexStats {
  int64_t docs = 0, unchanged = 0, chunks = 0;
};

// One connection to the file; not for concurrent use (a server holds a mutex around it).
class RagIndex {
 public:
  // Opens an index; `create`: makes it when missing. Error when the file is not an index of
  // ours (or not SQLite), naming the path.
  explicit RagIndex(const std::filesystem::path& path, bool create = false, const LoadOptions& embed_load = {});
  ~RagIndex();
  RagIndex(const RagIndex&) = delete;
  RagIndex& operator=(const RagIndex&) = delete;

  // Adds the documents; one that is already there with other text, title or settings has its
  // chunks replaced, one that is the same is left alone (`unchanged`). Documents of the index
  // that are not given are kept. One transaction: all or nothing.
  IndexStats add(const std::vector<RagDoc>& docs, const IndexOptions& options);

  // The k best chunks for `query`, best first: BM25, or fused with the embeddings (dense).
  std::vector<RagHit> search(const std::string& query, int k, bool dense = false);
  std::string embed_model() const;  // "" when the index has no embeddings
  int64_t chunk_count() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::string meta(const std::string& key) const;
  void set_meta(const std::string& key, const std::string& value);
  std::vector<RagHit> bm25(const std::string& query, int n);
  std::vector<RagHit> nearest(const std::string& query, int n);
  LoadedModel& embedder(const std::string& model_path);

  std::filesystem::path path_;
  sqlite3* db_ = nullptr;
  LoadOptions embed_load_;
  std::unique_ptr<LoadedModel> embedder_;
};

// Replaces each "{name}" of `values` in `tmpl` in one pass (inserted text is not scanned
// again, so a question holding "{context}" stays as it is). Other text is kept verbatim.
std::string fill_template(const std::string& tmpl, const std::map<std::string, std::string>& values);

// A one-shot template for instruction-following models: an example of context, question
// and a cited one-line answer, then {context}, {question} and "Answer:".
extern const char* const kDefaultRagTemplate;

struct RagOptions {
  int k = 3;
  bool dense = false;
  std::string prompt_template = kDefaultRagTemplate;
};

struct RagPrompt {
  std::vector<RagHit> retrieved;
  std::string prompt;
};

// The retrieved chunks for `question` and the template filled with them: {context} is one
// line "[i] text" per chunk (i from 1, newlines in the text as spaces). For `rlhf serve --rag`.
RagPrompt rag_prompt(RagIndex& index, const std::string& question, const RagOptions& options);

struct RagAnswer {
  std::string answer;                  // the first line of the generation, markers removed
  std::vector<std::string> citations;  // chunk ids of the "[i]" markers, in order of first use
  std::vector<RagHit> retrieved;
  std::string raw;                     // the generated text
};

// Splits a generation into the answer (its first line, without the "[i]" markers that name a
// retrieved chunk; numbers outside 1..retrieved.size() are left as text) and the cited ids.
RagAnswer parse_rag_answer(const std::string& raw, const std::vector<RagHit>& retrieved);

// Retrieves, prompts and answers every question with one Llm::complete call (stop at "\n").
std::vector<RagAnswer> rag_ask(Llm& llm, RagIndex& index, const std::vector<std::string>& questions,
                               const RagOptions& options, CompletionParams params);

}  // namespace rlhf
