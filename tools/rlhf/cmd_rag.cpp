// rlhf rag index|search|ask and rlhf react: retrieval-augmented answers and ReAct agents over
// an index built from a folder or JSONL of documents (src/apps/rag.h, src/apps/react.h).
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/rag.h"
#include "apps/react.h"
#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"

using json = nlohmann::json;

namespace rlhf::cli {

namespace {

// The settings every app command shares: the model, one question or a batch file, decoding.
struct AppArgs {
  std::string model, tmpl, question, questions, out, device = "cpu", dtype = "float32";
  float temperature = 0;
  int64_t max_tokens = 128;
  uint64_t seed = 0;
};

void add_app_options(CLI::App& cmd, AppArgs& a, const char* question_help) {
  cmd.add_option("--model,-m", a.model, "Model path, or an http(s):// OpenAI-compatible endpoint")->required();
  cmd.add_option("--template", a.tmpl, "Prompt template file (default: the built-in few-shot template)");
  cmd.add_option("question", a.question, question_help);
  cmd.add_option("--questions", a.questions, "JSONL with `question` (and optional `id`) per line; needs --out");
  cmd.add_option("--out,-o", a.out, "Where to write the answers (JSONL, one per question)");
  cmd.add_option("--temperature,-t", a.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd.add_option("--max-tokens", a.max_tokens, "Tokens to generate at most (per step for react)")->capture_default_str();
  cmd.add_option("--seed,-s", a.seed, "Random seed for sampling")->capture_default_str();
  cmd.add_option("--device", a.device, "cpu, cuda or cuda:N (local models)")->capture_default_str();
  cmd.add_option("--dtype", a.dtype, "float32 or bfloat16 (local models)")->capture_default_str();
}

CompletionParams completion_params(const AppArgs& a) {
  CompletionParams p;
  p.max_tokens = a.max_tokens;
  p.temperature = a.temperature;
  p.seed = a.seed;
  return p;
}

// The input rows (each a JSON object with a string `question`) of batch mode, or the one
// positional question as {"question": ...}.
std::vector<json> read_questions(const AppArgs& a) {
  check(a.question.empty() != a.questions.empty(), "give one QUESTION or --questions FILE (not both)");
  check(a.questions.empty() || !a.out.empty(), "--questions needs --out");
  if (a.questions.empty()) return {json{{"question", a.question}}};
  std::vector<json> rows;
  std::istringstream in(read_file(a.questions));
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = a.questions + ":" + std::to_string(no) + ": ";
    check(j.is_object(), where + "not a JSON object");
    check(j.contains("question") && j["question"].is_string(), where + "needs a `question` (string)");
    rows.push_back(std::move(j));
  }
  check(!rows.empty(), a.questions + ": no questions");
  return rows;
}

std::vector<std::string> question_texts(const std::vector<json>& rows) {
  std::vector<std::string> q;
  for (const auto& r : rows) q.push_back(r["question"].get<std::string>());
  return q;
}

json question_id(const std::vector<json>& rows, size_t i) { return rows[i].contains("id") ? rows[i]["id"] : json(i); }

void write_jsonl(const std::string& path, const std::vector<json>& rows) {
  write_file_atomic(path, [&](std::ostream& o) {
    for (const auto& r : rows) o << dump_json(r) << "\n";
  });
}

json hits_json(const std::vector<RagHit>& hits) {
  json j = json::array();
  for (const auto& h : hits) j.push_back({{"id", h.id}, {"score", h.score}, {"text", h.text}});
  return j;
}

std::unique_ptr<Llm> open_model(const AppArgs& a) { return open_llm(a.model, LoadOptions{a.device, a.dtype, {}}); }

// ---- rlhf rag index | search | ask --------------------------------------------------------

void add_rag_index(CLI::App& rag) {
  struct Args {
    std::string docs, index;
    IndexOptions opt;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = rag.add_subcommand("index", "Index documents (chunks, BM25, optional embeddings) in one SQLite file");
  cmd->add_option("--docs", args->docs, "A folder of .txt/.md files, or JSONL with id, text (and title)")->required();
  cmd->add_option("--index", args->index, "The index file (created; changed documents are re-chunked)")->required();
  cmd->add_option("--chunk-chars", args->opt.chunk_chars, "Characters per chunk at most")->capture_default_str();
  cmd->add_option("--overlap", args->opt.overlap, "Characters a chunk repeats of the one before")->capture_default_str();
  cmd->add_option("--embed-model", args->opt.embed_model,
                  "Also store each chunk's embedding by this local model (for --dense queries)");
  cmd->add_option("--embed-batch", args->opt.embed_batch, "Chunks embedded together")->capture_default_str();
  cmd->add_option("--device", args->opt.load.device, "cpu, cuda or cuda:N (the embedding model)")->capture_default_str();
  cmd->callback([args] {
    auto docs = read_docs(args->docs);
    RagIndex index(args->index, /*create=*/true, args->opt.load);
    const auto s = index.add(docs, args->opt);
    std::cout << args->index << ": " << s.docs << " documents (" << s.unchanged << " unchanged), " << s.chunks
              << " chunks written; " << index.chunk_count() << " chunks in all"
              << (index.embed_model().empty() ? "" : ", embedded with " + index.embed_model()) << "\n";
  });
}

void add_rag_search(CLI::App& rag) {
  struct Args {
    std::string index, query, device = "cpu";
    int k = 3;
    bool dense = false;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = rag.add_subcommand("search", "Print the best chunks for a query as JSON lines (id, doc, score, text)");
  cmd->add_option("--index", args->index, "The index file (from rlhf rag index)")->required();
  cmd->add_option("--k", args->k, "Chunks to print")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--dense", args->dense, "Fuse BM25 with the index's embeddings (reciprocal-rank fusion)");
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N (the embedding model)")->capture_default_str();
  cmd->add_option("query", args->query, "The query text")->required();
  cmd->callback([args] {
    RagIndex index(args->index, false, LoadOptions{args->device});
    for (const auto& h : index.search(args->query, args->k, args->dense))
      std::cout << dump_json({{"id", h.id}, {"doc", h.doc}, {"score", h.score}, {"text", h.text}}) << "\n";
  });
}

void add_rag_ask(CLI::App& rag) {
  struct Args {
    AppArgs app;
    std::string index;
    RagOptions rag;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = rag.add_subcommand("ask", "Answer with the retrieved chunks in the prompt, citing them as [i]");
  cmd->add_option("--index", args->index, "The index file (from rlhf rag index)")->required();
  cmd->add_option("--k", args->rag.k, "Chunks in the prompt")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--dense", args->rag.dense, "Fuse BM25 with the index's embeddings (reciprocal-rank fusion)");
  add_app_options(*cmd, args->app, "The question (or use --questions)");
  cmd->callback([args] {
    const auto rows = read_questions(args->app);
    if (!args->app.tmpl.empty()) args->rag.prompt_template = read_file(args->app.tmpl);
    RagIndex index(args->index, false, LoadOptions{args->app.device, args->app.dtype, {}});
    auto llm = open_model(args->app);
    auto answers = rag_ask(*llm, index, question_texts(rows), args->rag, completion_params(args->app));
    if (args->app.questions.empty()) {
      std::cout << answers[0].answer << "\n";
      if (!answers[0].citations.empty()) {
        std::cout << "Sources:";
        for (const auto& c : answers[0].citations) std::cout << " " << c;
        std::cout << "\n";
      }
      return;
    }
    std::vector<json> out;
    for (size_t i = 0; i < rows.size(); ++i) {
      json j = rows[i];
      j["answer"] = answers[i].answer;
      j["citations"] = answers[i].citations;
      j["retrieved"] = hits_json(answers[i].retrieved);
      j["raw"] = answers[i].raw;
      out.push_back(std::move(j));
    }
    write_jsonl(args->app.out, out);
  });
}

}  // namespace

void add_rag(CLI::App& app) {
  auto* rag = app.add_subcommand("rag", "Retrieval-augmented generation: index documents, search, answer with citations");
  rag->require_subcommand(1);
  add_rag_index(*rag);
  add_rag_search(*rag);
  add_rag_ask(*rag);
}

// ---- rlhf react -----------------------------------------------------------------------------

void add_react(CLI::App& app) {
  struct Args {
    AppArgs app;
    std::string index, transcript;
    ReactOptions react;
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("react", "ReAct agent: Thought/Action/Observation steps with search, lookup, calculate");
  cmd->add_option("--index", args->index, "The index that search[...] reads (from rlhf rag index)")->required();
  cmd->add_option("--max-steps", args->react.max_steps, "Actions per question at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--transcript", args->transcript, "Write every step as a JSONL line here");
  add_app_options(*cmd, args->app, "The question (or use --questions)");
  cmd->callback([args] {
    const auto rows = read_questions(args->app);
    if (!args->app.tmpl.empty()) args->react.prompt_template = read_file(args->app.tmpl);
    RagIndex index(args->index);
    auto llm = open_model(args->app);
    auto results = react(*llm, react_tools(index), question_texts(rows), args->react, completion_params(args->app));
    std::vector<json> transcript, out;
    for (size_t i = 0; i < rows.size(); ++i) {
      json j = rows[i], steps = json::array();
      for (const auto& s : results[i].steps) {
        steps.push_back(react_step_json(question_id(rows, i), s));
        transcript.push_back(steps.back());
      }
      j["answer"] = results[i].answer;
      j["steps"] = steps;
      j["finished"] = results[i].finished;
      out.push_back(std::move(j));
    }
    if (!args->transcript.empty()) write_jsonl(args->transcript, transcript);
    if (!args->app.questions.empty()) return write_jsonl(args->app.out, out);
    std::cout << results[0].trajectory;
    std::cout << (results[0].finished ? "Answer: " + results[0].answer
                                      : "No answer after " + std::to_string(args->react.max_steps) + " steps.")
              << "\n";
  });
}

}  // namespace rlhf::cli
