// rlhf sandbox run, cot and pal from the command line: hostile programs end in one line with
// the reason, and batch mode writes one record per question with its fields.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/io.h"
#include "test_util.h"

using namespace rlhf;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& p) {
  std::istringstream lines(read_file(p));
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(lines, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

void write_questions(const std::filesystem::path& p) {
  write_file_atomic(p,
                    "{\"id\": \"q1\", \"question\": \"Tom has 3 apples and buys 4 more. How many?\", \"gold\": \"7\"}\n"
                    "\n"
                    "{\"question\": \"What is 12 times 3?\", \"id\": 2}\n"
                    "{\"id\": \"q3\", \"question\": \"Once upon a time\"}\n");
}

}  // namespace

TEST(CliReason, SandboxRunPrintsOutputAndValue) {
  TempDir tmp;
  write_file_atomic(tmp / "ok.lua", "print('hi', 2)\nreturn 6 * 7\n");
  auto r = run_cli("sandbox run " + (tmp / "ok.lua").string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "hi\t2\n42\n");
}

TEST(CliReason, SandboxRunStopsHostileFilesWithTheReason) {
  TempDir tmp;
  struct Case { std::string flags, code, reason; };
  const std::vector<Case> cases = {
      {"--max-instructions 100000", "while true do end", "instruction limit exceeded (100000)"},
      {"--max-memory-mb 16", "local t = {} while true do t[#t + 1] = 'xxxxxxxx' .. #t end",
       "memory limit exceeded (16777216 bytes)"},
      {"--max-memory-mb 16", "return string.rep('x', 1e9)", "memory limit exceeded (16777216 bytes)"},
      {"", "os.execute('echo pwned')", "global 'os'"},
      {"", "return io.open('/etc/passwd')", "global 'io'"},
  };
  for (const auto& [flags, code, reason] : cases) {
    write_file_atomic(tmp / "bad.lua", code);
    auto r = run_cli("sandbox run " + flags + " " + (tmp / "bad.lua").string());
    EXPECT_EQ(r.exit_code, 1) << code << ": " << r.output;
    EXPECT_EQ(r.output.rfind("rlhf: error: " + (tmp / "bad.lua").string() + ": ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(reason), std::string::npos) << code << ": " << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
}

TEST(CliReason, CotBatchWritesOneRecordPerQuestion) {
  TempDir tmp;
  write_questions(tmp / "q.jsonl");
  auto r = run_cli("cot --model " + stories_gguf() + " --n 2 --max-tokens 12 --questions " + (tmp / "q.jsonl").string() +
                   " --out " + (tmp / "out.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = read_jsonl(tmp / "out.jsonl");
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0]["id"], "q1");
  EXPECT_EQ(out[0]["gold"], "7");
  EXPECT_EQ(out[1]["id"], 2);
  EXPECT_EQ(out[2]["question"], "Once upon a time");
  for (const auto& o : out) {
    EXPECT_TRUE(o["answer"].is_string());
    EXPECT_TRUE(o["reasoning"].is_string());
    ASSERT_EQ(o["paths"].size(), 2u);
    EXPECT_EQ(o["reasoning"], o["paths"][0]["text"]);
    EXPECT_TRUE(o["votes"].is_object());
  }
}

TEST(CliReason, PalBatchWritesOneRecordPerQuestion) {
  TempDir tmp;
  write_questions(tmp / "q.jsonl");
  auto r = run_cli("pal --model " + stories_gguf() + " --max-tokens 24 --questions " + (tmp / "q.jsonl").string() +
                   " --out " + (tmp / "out.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto out = read_jsonl(tmp / "out.jsonl");
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0]["id"], "q1");
  EXPECT_EQ(out[1]["id"], 2);
  for (const auto& o : out) {
    EXPECT_TRUE(o["answer"].is_string());
    EXPECT_TRUE(o["program"].is_string());
    EXPECT_TRUE(o["output"].is_string());
    const std::string status = o["status"];
    EXPECT_TRUE(status == "ok" || status.rfind("error: ", 0) == 0 || status.find("limit") != std::string::npos) << status;
  }
}

TEST(CliReason, BadQuestionsFileIsAOneLineError) {
  TempDir tmp;
  write_file_atomic(tmp / "q.jsonl", "{\"question\": \"fine\"}\n{\"id\": 3}\n");
  auto r = run_cli("cot --model " + stories_gguf() + " --questions " + (tmp / "q.jsonl").string() + " --out " +
                   (tmp / "out.jsonl").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.output.rfind("rlhf: error: ", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("q.jsonl:2"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp / "out.jsonl"));
  // One value per --stop: the question after it stays the question.
  auto stop = run_cli("pal --model " + stories_gguf() + " --max-tokens 4 --stop '\\n' 'What is 2 + 2?'");
  EXPECT_EQ(stop.exit_code, 0) << stop.output;
  auto both = run_cli("pal --model " + stories_gguf() + " --questions " + (tmp / "q.jsonl").string() + " 'a question'");
  EXPECT_EQ(both.exit_code, 1) << both.output;
}
