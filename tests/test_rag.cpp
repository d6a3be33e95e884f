// RAG and ReAct: chunking, the SQLite/FTS5 index (ranking, hostile queries, re-indexing),
// dense embeddings of stories260K, prompts and citations, the ReAct loop with a scripted
// model, and the `rlhf rag` / `rlhf react` commands end to end.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "apps/rag.h"
#include "apps/react.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "scripted_llm.h"
#include "test_util.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

using test::ScriptedLlm;

std::vector<RagDoc> small_docs() {
  return {{"paris", "", "Paris is the capital of France. The Eiffel Tower stands in Paris and is visited by many."},
          {"rome", "", "Rome is the capital of Italy. The Colosseum stands in Rome."},
          {"zorblat", "", "The zorblat is a rare blue fruit grown only on the island of Quenby. Farmers pick it in spring."},
          {"fruit", "", "Apples and pears are common fruit. Many kinds of fruit are grown on farms in France."}};
}

size_t chars(const std::string& s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += utf8::step(s, i).len) ++n;
  return n;
}

}  // namespace

// ---- chunking -------------------------------------------------------------------------------

TEST(RagChunk, CutsAtSentencesAndOverlaps) {
  std::string text;
  for (int i = 0; i < 30; ++i) text += "Sentence number " + std::to_string(i) + " is here. ";
  auto pieces = chunk_text(text, 120, 40);
  ASSERT_GT(pieces.size(), 3u);
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_LE(chars(pieces[i]), 120u);
    if (i + 1 < pieces.size()) {
      EXPECT_EQ(pieces[i].back(), '.') << pieces[i];  // a sentence end, not mid-word
    }
    if (i > 0) {
      // The piece starts inside the previous one (overlap), at a word start; 20 characters
      // name one sentence ("number 12 is here. S").
      const auto head = pieces[i].substr(0, 20);
      EXPECT_NE(pieces[i - 1].find(head), std::string::npos) << pieces[i - 1] << " | " << pieces[i];
    }
  }
  EXPECT_EQ(pieces.back().substr(pieces.back().size() - 11), "29 is here.");
  EXPECT_EQ(pieces.front().substr(0, 17), "Sentence number 0");
}

TEST(RagChunk, PrefersParagraphBreaks) {
  const std::string a(50, 'a'), b(50, 'b');
  auto pieces = chunk_text(a + ". " + a + ".\n\n" + b + ". " + b + ".", 150, 0);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0], a + ". " + a + ".");
  EXPECT_EQ(pieces[1], b + ". " + b + ".");
}

TEST(RagChunk, NeverCutsInsideAUtf8Character) {
  // No spaces at all: every cut is a hard cut, in characters of 2, 3 and 4 bytes.
  std::string text;
  for (int i = 0; i < 100; ++i) text += i % 3 == 0 ? "é" : i % 3 == 1 ? "語" : "😀";
  auto pieces = chunk_text(text, 7, 2);
  std::string joined;
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_EQ(valid_utf8(pieces[i]), pieces[i]) << "piece " << i;
    if (i + 1 < pieces.size()) {
      EXPECT_EQ(chars(pieces[i]), 7u) << "piece " << i;
    }
    size_t skip = 0;  // a later piece repeats the previous one's last 2 characters
    for (int c = 0; i > 0 && c < 2; ++c) skip += utf8::step(pieces[i], skip).len;
    joined += pieces[i].substr(skip);
  }
  EXPECT_EQ(joined, text);
  EXPECT_THROW(chunk_text(text, 5, 5), Error);
}

// ---- the index ------------------------------------------------------------------------------

TEST(RagIndex, RareWordsRankTheirDocumentFirst) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  auto s = index.add(small_docs(), {});
  EXPECT_EQ(s.docs, 4);
  EXPECT_EQ(s.chunks, 4);
  auto hits = index.search("Where is the zorblat fruit grown?", 3);
  ASSERT_GE(hits.size(), 2u);
  EXPECT_EQ(hits[0].id, "zorblat#0");
  EXPECT_EQ(hits[0].doc, "zorblat");
  EXPECT_GT(hits[0].score, hits[1].score);
  EXPECT_EQ(index.search("Colosseum", 3)[0].id, "rome#0");
  EXPECT_EQ(index.search("What stands in Paris, the capital?", 1)[0].id, "paris#0");
  EXPECT_TRUE(index.search("nothing matches xylophone", 3).empty());
}

TEST(RagIndex, HostileQueriesAreText) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  index.add(small_docs(), {});
  for (std::string q : {"zorblat\"", "\"zorblat", "zorblat AND", "NEAR(zorblat", "zorblat*", "* zorblat",
                        "zorblat OR NOT AND", "text:zorblat", "^zorblat", "-zorblat", "zorblat) (", "{zorblat}",
                        "zorblat — Quenby’s", "\"\" zorblat '' ;DROP TABLE chunks;--"}) {
    std::vector<RagHit> hits;
    ASSERT_NO_THROW(hits = index.search(q, 3)) << q;
    ASSERT_FALSE(hits.empty()) << q;
    EXPECT_EQ(hits[0].id, "zorblat#0") << q;
  }
  for (std::string q : {"", "\"", "*", "AND", "NEAR(", "()", "—", "'; --"})
    EXPECT_NO_THROW(index.search(q, 3)) << q;
  EXPECT_EQ(fts5_query("a \"b\" NEAR(c*"), "\"a\" OR \"b\" OR \"NEAR\" OR \"c\"");
}

TEST(RagIndex, ReindexingAChangedDocReplacesItsChunks) {
  TempDir tmp;
  const auto path = tmp / "i.sqlite";
  auto docs = small_docs();
  {
    RagIndex index(path, true);
    std::string long_text;
    for (int i = 0; i < 20; ++i) long_text += "The zorblat tree number " + std::to_string(i) + " grows tall. ";
    docs[2].text = long_text;
    index.add(docs, {200, 50});
    EXPECT_GT(index.search("zorblat", 10).size(), 3u);
  }
  RagIndex index(path);
  docs[2].text = "The quorp is a small grey stone.";
  auto s = index.add(docs, {200, 50});
  EXPECT_EQ(s.unchanged, 3);
  EXPECT_EQ(s.chunks, 1);
  EXPECT_EQ(index.chunk_count(), 4);
  EXPECT_TRUE(index.search("zorblat", 10).empty());
  sqlite3* db = nullptr;  // the old chunks' FTS rows are gone too, not just hidden by the join
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM chunks_fts", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int64(st, 0), 4);
  sqlite3_finalize(st);
  sqlite3_close(db);
  auto hits = index.search("quorp", 10);
  ASSERT_EQ(hits.size(), 1u);
  EXPECT_EQ(hits[0].id, "zorblat#0");
  EXPECT_EQ(hits[0].text, docs[2].text);
}

TEST(RagIndex, RefusesFilesThatAreNotOurs) {
  TempDir tmp;
  write_file_atomic(tmp / "text.sqlite", "this is not a database, just some text that is long enough..........");
  EXPECT_THROW(RagIndex(tmp / "text.sqlite"), Error);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((tmp / "other.sqlite").c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "CREATE TABLE people(name TEXT)", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  try {
    RagIndex index(tmp / "other.sqlite", true);
    FAIL() << "opened another database";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a RAG index"), std::string::npos) << e.what();
  }
  EXPECT_THROW(RagIndex(tmp / "missing.sqlite"), Error);
}

TEST(RagIndex, ReadsFoldersAndJsonl) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "docs" / "sub");
  write_file_atomic(tmp / "docs" / "a.txt", "Alpha.");
  write_file_atomic(tmp / "docs" / "sub" / "b.md", "Beta.");
  write_file_atomic(tmp / "docs" / "skip.json", "{}");
  auto docs = read_docs(tmp / "docs");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].id, "a");
  EXPECT_EQ(docs[1].id, "sub/b");
  write_file_atomic(tmp / "d.jsonl", "{\"id\": \"x\", \"title\": \"T\", \"text\": \"X.\"}\n\n{\"id\": 7, \"text\": \"Y.\"}\n");
  docs = read_docs(tmp / "d.jsonl");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].title, "T");
  EXPECT_EQ(docs[1].id, "7");
  write_file_atomic(tmp / "bad.jsonl", "{\"id\": \"x\"}\n");
  EXPECT_THROW(read_docs(tmp / "bad.jsonl"), Error);
  std::filesystem::create_directories(tmp / "empty");
  EXPECT_THROW(read_docs(tmp / "empty"), Error);
  write_file_atomic(tmp / "empty" / "blank.txt", " \n\n ");
  EXPECT_THROW(read_docs(tmp / "empty"), Error);
}

// ---- dense retrieval ------------------------------------------------------------------------

TEST(RagDense, MeanPoolingIgnoresPadding) {
  auto lm = load_model(stories_gguf());
  const std::string text = "The cat sat on the mat.";
  auto alone = embed_texts(lm, {text});  // (1, C)
  auto batch = embed_texts(lm, {"Once upon a time there was a very long story about a dog and a ball.", text, "Hi"}, 3);
  ASSERT_EQ(batch.size(0), 3);
  EXPECT_TRUE(torch::allclose(alone[0], batch[1], 1e-5, 1e-5)) << (alone[0] - batch[1]).abs().max();
  EXPECT_NEAR(batch.norm(2, 1).min().item<float>(), 1.0f, 1e-5);
  EXPECT_FALSE(torch::allclose(batch[0], batch[1], 1e-3, 1e-3));
}

TEST(RagDense, FusesBm25WithEmbeddings) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  EXPECT_THROW(index.search("zorblat", 3, true), Error);  // none stored yet
  IndexOptions opt;
  opt.embed_model = stories_gguf();
  index.add(small_docs(), opt);
  EXPECT_EQ(index.embed_model(), std::filesystem::absolute(stories_gguf()).lexically_normal().string());
  // The exact text of a chunk: first by BM25 and by cosine similarity (1), so 2 / (60 + 1).
  const std::string q = small_docs()[2].text;
  auto hits = index.search(q, 4, true);
  ASSERT_EQ(hits.size(), 4u);
  EXPECT_EQ(hits[0].id, "zorblat#0");
  EXPECT_NEAR(hits[0].score, 2.0 / 61, 1e-12);
  for (size_t i = 1; i < hits.size(); ++i) EXPECT_LE(hits[i].score, hits[i - 1].score);
  // Another embedding model, or one for an index whose chunks have none: refused.
  RagIndex plain(tmp / "p.sqlite", true);
  plain.add(small_docs(), {});
  EXPECT_THROW(plain.add(small_docs(), opt), Error);
}

// ---- prompts and answers --------------------------------------------------------------------

TEST(RagAsk, PromptHoldsTheChunksAndCitationsAreParsed) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  index.add(small_docs(), {});
  ScriptedLlm llm;
  llm.script = {{"zorblat", {"It grows on Quenby [1] and in spring [2][9].\nQuestion: more junk [3]"}}};
  RagOptions opt;
  opt.k = 2;
  opt.prompt_template = "C:\n{context}\nQ: {question}\nA:";
  auto answers = rag_ask(llm, index, {"Where is the zorblat fruit grown? {context}"}, opt, {});
  ASSERT_EQ(llm.calls.size(), 1u);
  const auto& prompt = llm.calls[0][0];
  const auto retrieved = index.search("Where is the zorblat fruit grown? {context}", 2);
  EXPECT_EQ(prompt, "C:\n[1] " + retrieved[0].text + "\n[2] " + retrieved[1].text +
                        "\nQ: Where is the zorblat fruit grown? {context}\nA:");
  EXPECT_NE(std::find(llm.last_params.stop.begin(), llm.last_params.stop.end(), "\n"), llm.last_params.stop.end());
  const auto& a = answers[0];
  EXPECT_EQ(a.answer, "It grows on Quenby and in spring [9].");  // [9] names no chunk: kept as text
  EXPECT_EQ(a.citations, (std::vector<std::string>{"zorblat#0", retrieved[1].id}));
  EXPECT_EQ(a.retrieved.size(), 2u);
  EXPECT_EQ(a.raw.substr(0, 14), "It grows on Qu");
}

TEST(RagAsk, ChunkNewlinesBecomeSpacesInTheContext) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  index.add({{"d", "", "First line about zorblat.\nSecond line."}}, {});
  auto p = rag_prompt(index, "zorblat", {1, false, "{context}|{question}"});
  EXPECT_EQ(p.prompt, "[1] First line about zorblat. Second line.|zorblat");
}

// ---- ReAct ----------------------------------------------------------------------------------

namespace {

ReactTools scripted_tools() {
  ReactTools t;
  t.search = [](const std::string& q) -> std::optional<RagHit> {
    if (q == "Alpha founded") return RagHit{"alpha#0", "alpha", 1, "Alpha is a town.\nIt was founded in 1889. Its mayor is Bo."};
    if (q == "Beta opened") return RagHit{"beta#2", "beta", 1, "Beta is a bridge. Beta opened in 1931. Beta is long."};
    return std::nullopt;
  };
  t.calculate = [](const std::string& e) { return e == "1931 - 1889" ? std::string("42") : "Error: runtime error"; };
  return t;
}

ReactOptions test_react_options(int max_steps = 6) {
  ReactOptions o;
  o.prompt_template = "Q: {question}\n";
  o.max_steps = max_steps;
  return o;
}

}  // namespace

TEST(React, TwoHopTrajectory) {
  ScriptedLlm llm;
  llm.script = {{"How many years", {"Thought: I need Alpha's founding.\nAction: search[Alpha founded]",
                                    "Thought: Now Beta.\nAction: search[Beta opened]\nThought: extra text is cut",
                                    "Thought: When exactly?\nAction: lookup[OPENED]",
                                    " Thought: Subtract.\nAction: calculate[1931 - 1889]",
                                    "Thought: Done.\nAction: finish[ 42 ]"}}};
  auto r = react(llm, scripted_tools(), {"How many years from Alpha to Beta?"}, test_react_options(), {})[0];
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.answer, "42");
  ASSERT_EQ(r.steps.size(), 5u);
  const std::vector<std::string> actions = {"search", "search", "lookup", "calculate", "finish"};
  const std::vector<std::string> observations = {
      "[alpha#0] Alpha is a town. It was founded in 1889. Its mayor is Bo.",
      "[beta#2] Beta is a bridge. Beta opened in 1931. Beta is long.", "Beta opened in 1931.", "42", ""};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(r.steps[i].step, static_cast<int>(i + 1));
    EXPECT_EQ(r.steps[i].action, actions[i]);
    EXPECT_EQ(r.steps[i].observation, observations[i]);
  }
  EXPECT_EQ(r.steps[1].thought, "Now Beta.");
  EXPECT_EQ(r.steps[3].argument, "1931 - 1889");
  // What the model saw at the last step: its own lines up to each Action, then the observation.
  ASSERT_EQ(llm.calls.size(), 5u);
  EXPECT_EQ(llm.calls[4][0], "Q: How many years from Alpha to Beta?\n"
                             "Thought: I need Alpha's founding.\nAction: search[Alpha founded]\n"
                             "Observation: [alpha#0] Alpha is a town. It was founded in 1889. Its mayor is Bo.\n"
                             "Thought: Now Beta.\nAction: search[Beta opened]\n"
                             "Observation: [beta#2] Beta is a bridge. Beta opened in 1931. Beta is long.\n"
                             "Thought: When exactly?\nAction: lookup[OPENED]\nObservation: Beta opened in 1931.\n"
                             " Thought: Subtract.\nAction: calculate[1931 - 1889]\nObservation: 42\n");
  EXPECT_NE(std::find(llm.last_params.stop.begin(), llm.last_params.stop.end(), "\nObservation:"),
            llm.last_params.stop.end());
  EXPECT_EQ(react_step_json("q7", r.steps[3]).dump(),
            R"({"action":"calculate","argument":"1931 - 1889","observation":"42","question_id":"q7","step":4,"thought":"Subtract."})");
}

TEST(React, MalformedActionsAreAnsweredAndTheLoopGoesOn) {
  ScriptedLlm llm;
  llm.script = {{"guess", {"I will just guess.", "Thought: x\nAction: search[Alpha founded", "Action: fly[away]",
                           "Action: lookup[mayor]", "Action: search[nothing here]", "Action: finish[7]"}}};
  auto r = react(llm, scripted_tools(), {"Can you guess?"}, test_react_options(), {})[0];
  ASSERT_EQ(r.steps.size(), 6u);
  for (int i : {0, 1, 2}) {
    EXPECT_EQ(r.steps[i].action, "invalid");
    EXPECT_EQ(r.steps[i].observation, kInvalidAction);
  }
  EXPECT_EQ(r.steps[1].argument, "search[Alpha founded");
  EXPECT_EQ(r.steps[3].observation, "No sentence with 'mayor'.");  // nothing retrieved yet
  EXPECT_EQ(r.steps[4].observation, "No results.");
  EXPECT_TRUE(r.finished);
  EXPECT_EQ(r.answer, "7");
  EXPECT_NE(llm.calls[1][0].find("I will just guess.\nObservation: " + std::string(kInvalidAction) + "\n"),
            std::string::npos);
}

TEST(React, StopsAtTheStepLimit) {
  ScriptedLlm llm;
  llm.script = {{"loop", {"Action: search[Alpha founded]", "Action: search[Alpha founded]", "Action: search[Alpha founded]",
                          "Action: finish[too late]"}}};
  auto r = react(llm, scripted_tools(), {"loop forever"}, test_react_options(3), {})[0];
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.answer, "");
  EXPECT_EQ(r.steps.size(), 3u);
  EXPECT_EQ(llm.calls.size(), 3u);
}

TEST(React, BatchStepsUnfinishedQuestionsTogether) {
  ScriptedLlm llm;
  llm.script = {{"first", {"Action: finish[1]"}},
                {"second", {"Action: search[Beta opened]", "Action: lookup[long]", "Action: finish[2]"}}};
  auto rs = react(llm, scripted_tools(), {"the first", "the second"}, test_react_options(), {});
  ASSERT_EQ(llm.calls.size(), 3u);
  EXPECT_EQ(llm.calls[0].size(), 2u);
  EXPECT_EQ(llm.calls[1].size(), 1u);
  EXPECT_EQ(llm.calls[2].size(), 1u);
  EXPECT_EQ(rs[0].answer, "1");
  EXPECT_EQ(rs[0].steps.size(), 1u);
  EXPECT_EQ(rs[1].answer, "2");
  EXPECT_EQ(rs[1].steps[1].observation, "Beta is long.");
}

TEST(React, RealToolsSearchTheIndexAndCalculateInTheSandbox) {
  TempDir tmp;
  RagIndex index(tmp / "i.sqlite", true);
  index.add(small_docs(), {});
  ScriptedLlm llm;
  llm.script = {{"fruit", {"Action: search[zorblat island]", "Action: lookup[ISLAND]", "Action: calculate[2 * (3 + 4)]",
                           "Action: calculate[10 / 4]", "Action: calculate[os.exit(1)]", "Action: finish[Quenby]"}}};
  auto r = react(llm, react_tools(index), {"Which fruit?"}, test_react_options(), {})[0];
  ASSERT_EQ(r.steps.size(), 6u);
  EXPECT_EQ(r.steps[0].observation, "[zorblat#0] " + small_docs()[2].text);
  EXPECT_EQ(r.steps[1].observation, "The zorblat is a rare blue fruit grown only on the island of Quenby.");
  EXPECT_EQ(r.steps[2].observation, "14");
  EXPECT_EQ(r.steps[3].observation, "2.5");
  EXPECT_EQ(r.steps[4].observation.rfind("Error: ", 0), 0u) << r.steps[4].observation;
  EXPECT_EQ(r.answer, "Quenby");
}

// ---- the commands ---------------------------------------------------------------------------

namespace {

void expect_clean_error(const test::CliResult& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("rlhf: error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
}

std::vector<json> read_jsonl(const std::filesystem::path& p) {
  std::vector<json> rows;
  std::istringstream in(read_file(p));
  for (std::string line; std::getline(in, line);) rows.push_back(json::parse(line));
  return rows;
}

// A folder of the small documents and an index of it.
std::string make_index(const TempDir& tmp) {
  std::filesystem::create_directories(tmp / "docs");
  for (const auto& d : small_docs()) write_file_atomic(tmp / "docs" / (d.id + ".txt"), d.text);
  const auto index = (tmp / "i.sqlite").string();
  auto r = run_cli("rag index --docs " + (tmp / "docs").string() + " --index " + index);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("4 documents (0 unchanged), 4 chunks written"), std::string::npos) << r.output;
  return index;
}

}  // namespace

TEST(CliRag, IndexThenSearch) {
  TempDir tmp;
  const auto index = make_index(tmp);
  auto r = run_cli("rag search --index " + index + " --k 2 'Where is the zorblat grown?'", "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string first;
  std::getline(lines, first);
  auto j = json::parse(first);
  EXPECT_EQ(j["id"], "zorblat#0");
  EXPECT_EQ(j["doc"], "zorblat");
  EXPECT_EQ(j["text"], small_docs()[2].text);
  EXPECT_TRUE(j["score"].is_number());
  auto again = run_cli("rag index --docs " + (tmp / "docs").string() + " --index " + index);
  EXPECT_NE(again.output.find("4 documents (4 unchanged), 0 chunks written"), std::string::npos) << again.output;
}

TEST(CliRag, BadInputIsOneLine) {
  TempDir tmp;
  expect_clean_error(run_cli("rag index --docs " + (tmp / "nope").string() + " --index " + (tmp / "i").string()), "nope");
  std::filesystem::create_directories(tmp / "empty");
  expect_clean_error(run_cli("rag index --docs " + (tmp / "empty").string() + " --index " + (tmp / "i").string()),
                     "no documents");
  write_file_atomic(tmp / "notes.txt", "hello, not an index of ours at all....................................");
  expect_clean_error(run_cli("rag search --index " + (tmp / "notes.txt").string() + " zorblat"), "not a RAG index");
  expect_clean_error(run_cli("rag search --index " + (tmp / "missing.sqlite").string() + " zorblat"), "no such index");
}

TEST(CliRag, AskAndReactInBatchWithStories) {
  TempDir tmp;
  const auto index = make_index(tmp);
  write_file_atomic(tmp / "q.jsonl", "{\"id\": \"a\", \"question\": \"Where is the zorblat grown?\", \"gold\": \"Quenby\"}\n"
                                     "{\"question\": \"What stands in Rome?\"}\n");
  const std::string common = " --model " + stories_gguf() + " --questions " + (tmp / "q.jsonl").string() +
                             " --max-tokens 12 --index " + index;
  auto r = run_cli("rag ask --k 2" + common + " --out " + (tmp / "ask.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto rows = read_jsonl(tmp / "ask.jsonl");
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["id"], "a");
  EXPECT_EQ(rows[0]["gold"], "Quenby");
  EXPECT_EQ(rows[0]["retrieved"][0]["id"], "zorblat#0");
  EXPECT_EQ(rows[1]["retrieved"][0]["id"], "rome#0");
  for (const auto& row : rows) {
    EXPECT_TRUE(row["answer"].is_string());
    EXPECT_TRUE(row["raw"].is_string());
    EXPECT_TRUE(row["citations"].is_array());
    EXPECT_EQ(row["retrieved"].size(), 2u);
  }

  r = run_cli("react --max-steps 2" + common + " --out " + (tmp / "react.jsonl").string() + " --transcript " +
              (tmp / "t.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  rows = read_jsonl(tmp / "react.jsonl");
  ASSERT_EQ(rows.size(), 2u);
  size_t steps = 0;
  for (const auto& row : rows) {
    EXPECT_TRUE(row["answer"].is_string());
    EXPECT_TRUE(row["finished"].is_boolean());
    EXPECT_GE(row["steps"].size(), 1u);
    EXPECT_LE(row["steps"].size(), 2u);
    steps += row["steps"].size();
  }
  auto transcript = read_jsonl(tmp / "t.jsonl");
  ASSERT_EQ(transcript.size(), steps);
  EXPECT_EQ(transcript[0]["question_id"], "a");
  EXPECT_EQ(transcript.back()["question_id"], 1);
  for (const auto& t : transcript)
    for (const char* f : {"step", "thought", "action", "argument", "observation"}) EXPECT_TRUE(t.contains(f)) << f;
}
