// The rlhf command line: generate/tokenize/convert on real data, and every kind of bad
// input ending in one clear line naming the file, a non-zero exit, and nothing half-written.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/io.h"
#include "core/utf8.h"
#include "data/datasets.h"
#include "euro_model.h"
#include "feedback/label_store.h"
#include "formats/safetensors.h"
#include "test_util.h"

using namespace rlhf;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::string stories(const std::string& f) { return (test::data_dir() / "stories260K" / f).string(); }

void write_prefix(const std::filesystem::path& src, const std::filesystem::path& dst, size_t n) {
  auto s = read_file(src);
  write_file_atomic(dst, s.substr(0, std::min(n, s.size())));
}

// Expects exit code 1 and a single "rlhf: error: ..." line that mentions every needle.
void expect_clean_error(const test::CliResult& r, std::vector<std::string> needles) {
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.rfind("rlhf: error: ", 0), 0u) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  for (const auto& n : needles) EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in: " << r.output;
}

}  // namespace

TEST(Cli, GenerateGreedyJsonHasTextTokensLogprobs) {
  auto r = run_cli("generate --model " + stories("stories260K.gguf") +
                   " --prompt 'Once upon a time' --temperature 0 --max-new-tokens 20 --json --n 2", "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  std::vector<nlohmann::json> objs;
  while (std::getline(lines, line))
    if (!line.empty()) objs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(objs.size(), 2u);
  for (const auto& o : objs) {
    EXPECT_EQ(o["tokens"].size(), o["logprobs"].size());
    EXPECT_FALSE(o["text"].get<std::string>().empty());
    EXPECT_LE(o["tokens"].size(), 20u);
  }
  EXPECT_EQ(objs[0]["tokens"], objs[1]["tokens"]);  // greedy: both samples identical
}

TEST(Cli, GenerateStreamsTheReferenceStory) {
  auto r = run_cli("generate --model " + stories("stories260K.bin") + " --temperature 0 --max-new-tokens 256", "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto expected = read_file(test::data_dir() / "stories260K" / "expected_greedy_t0.txt");
  EXPECT_EQ(r.output.substr(0, 60), expected.substr(0, 60));
}

TEST(Cli, TokenizeGpt2AndDecodeBack) {
  auto dir = (test::data_dir() / "gpt2-bpe").string();
  auto r = run_cli("tokenize --tokenizer " + dir, "Hello world");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "[15496,995]\n");
  auto d = run_cli("tokenize --decode --tokenizer " + dir, "[15496,995]");
  EXPECT_EQ(d.output, "Hello world");
  auto bad = run_cli("tokenize --decode --tokenizer " + dir, "[15496,999999]");
  expect_clean_error(bad, {"999999"});
}

TEST(Cli, ConvertWritesAHuggingFaceFolderThatLoadsBack) {
  TempDir tmp;
  auto out = (tmp / "hf").string();
  auto r = run_cli("convert --in " + stories("stories260K.gguf") + " --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (auto f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_TRUE(std::filesystem::exists(tmp / "hf" / f)) << f;
  auto a = run_cli("generate --model " + out + " --temperature 0 --max-new-tokens 16 --json", "", false);
  auto b = run_cli("generate --model " + stories("stories260K.gguf") + " --temperature 0 --max-new-tokens 16 --json", "", false);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  EXPECT_EQ(nlohmann::json::parse(a.output)["tokens"], nlohmann::json::parse(b.output)["tokens"]);
}

TEST(Cli, TruncatedGgufIsAOneLineError) {
  TempDir tmp;
  for (size_t n : {0ul, 3ul, 20ul, 5000ul, 600000ul}) {
    auto f = tmp / ("cut" + std::to_string(n) + ".gguf");
    write_prefix(stories("stories260K.gguf"), f, n);
    expect_clean_error(run_cli("generate --model " + f.string() + " --max-new-tokens 4"), {f.filename().string()});
  }
}

TEST(Cli, CorruptGgufMagicIsAOneLineError) {
  TempDir tmp;
  auto s = read_file(stories("stories260K.gguf"));
  s[0] = 'X';
  write_file_atomic(tmp / "bad.gguf", s);
  expect_clean_error(run_cli("generate --model " + (tmp / "bad.gguf").string()), {"bad.gguf"});
}

TEST(Cli, TruncatedLlama2cBinIsAOneLineError) {
  TempDir tmp;
  std::filesystem::copy(stories("tok512.bin"), tmp / "tok512.bin");
  for (size_t n : {10ul, 100000ul}) {
    write_prefix(stories("stories260K.bin"), tmp / "m.bin", n);
    expect_clean_error(run_cli("generate --model " + (tmp / "m.bin").string()), {"m.bin"});
  }
}

TEST(Cli, MissingTokenizerIsAOneLineError) {
  TempDir tmp;
  std::filesystem::copy(stories("stories260K.bin"), tmp / "alone.bin");
  expect_clean_error(run_cli("generate --model " + (tmp / "alone.bin").string()), {"alone.bin", "tok"});
}

TEST(Cli, UnknownArchitectureIsAOneLineError) {
  TempDir tmp;
  auto out = tmp / "hf";
  ASSERT_EQ(run_cli("convert --in " + stories("stories260K.gguf") + " --out " + out.string()).exit_code, 0);
  auto cfg = nlohmann::json::parse(read_file(out / "config.json"));
  cfg["architectures"] = {"MambaForCausalLM"};
  cfg["model_type"] = "mamba";
  write_file_atomic(out / "config.json", cfg.dump());
  expect_clean_error(run_cli("generate --model " + out.string()), {"config.json", "MambaForCausalLM"});
}

TEST(Cli, WrongTensorShapeAndCorruptSafetensorsAreOneLineErrors) {
  TempDir tmp;
  auto out = tmp / "hf";
  ASSERT_EQ(run_cli("convert --in " + stories("stories260K.gguf") + " --out " + out.string()).exit_code, 0);
  auto weights = read_safetensors(out / "model.safetensors");
  auto good = read_file(out / "model.safetensors");
  weights["model.norm.weight"] = torch::ones({63});
  write_safetensors(out / "model.safetensors", weights);
  expect_clean_error(run_cli("generate --model " + out.string()), {"model.norm.weight", "63"});

  write_file_atomic(out / "model.safetensors", good.substr(0, good.size() / 2));
  expect_clean_error(run_cli("generate --model " + out.string()), {"model.safetensors"});
}

TEST(Cli, FailedConvertLeavesTheExistingOutputIntact) {
  TempDir tmp;
  auto out = tmp / "hf";
  ASSERT_EQ(run_cli("convert --in " + stories("stories260K.gguf") + " --out " + out.string()).exit_code, 0);
  auto before = read_file(out / "model.safetensors");
  write_prefix(stories("stories260K.gguf"), tmp / "cut.gguf", 700000);
  expect_clean_error(run_cli("convert --in " + (tmp / "cut.gguf").string() + " --out " + out.string()), {"cut.gguf"});
  EXPECT_EQ(read_file(out / "model.safetensors"), before);
  for (const auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "temporary file left: " << e.path();
}

TEST(Cli, BadFlagsFailWithNonZeroExit) {
  EXPECT_NE(run_cli("generate").exit_code, 0);
  expect_clean_error(run_cli("generate --model " + stories("stories260K.gguf") + " --device tpu"), {"tpu"});
  expect_clean_error(run_cli("generate --model /nonexistent/model.gguf"), {"/nonexistent/model.gguf"});
}

TEST(Cli, ChatTemplateWrapsThePromptAndStopsAtTheNextTurn) {
  auto r = run_cli("generate --model " + stories("stories260K.gguf") +
                       " --chat hh --prompt 'Tell me a story' --max-new-tokens 60 --json --n 4 --seed 5",
                   "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    auto o = nlohmann::json::parse(line);
    EXPECT_EQ(o["prompt"], "\n\nHuman: Tell me a story\n\nAssistant:");
    EXPECT_EQ(o["text"].get<std::string>().find("\n\nHuman:"), std::string::npos);
  }
  expect_clean_error(run_cli("generate --model " + stories("stories260K.gguf") + " --chat nope -p x"), {"nope", "chatml"});
}

// Model text that ends inside a character or holds byte tokens that are no character: every
// CLI writer of it (generate --json, generate --n, label export) writes it, U+FFFD in the
// text and the exact ids beside it, instead of failing with json type_error.316.
TEST(Cli, GenerateWritesTextThatEndsInsideACharacter) {
  TempDir tmp;
  const auto m = test::write_euro_model(tmp / "euro");
  const std::string model = (tmp / "euro").string(), euro = "\xE2\x82\xAC", fffd = "\xEF\xBF\xBD";
  auto r = run_cli("generate --model " + model + " --prompt Once --temperature 0 --max-new-tokens 5 --json --n 2", "",
                   false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const auto o = nlohmann::json::parse(line);
    EXPECT_EQ(o["text"], euro + fffd);  // E2 82 AC E2 82: the second "€" is cut after two bytes
    EXPECT_EQ(o["tokens"], nlohmann::json({m.e2, m.x82, m.xac, m.e2, m.x82}));
  }
  EXPECT_EQ(n, 2);
  // Streamed and plain output show the same text.
  auto streamed = run_cli("generate --model " + model + " --prompt Once --temperature 0 --max-new-tokens 4", "", false);
  ASSERT_EQ(streamed.exit_code, 0) << streamed.output;
  EXPECT_EQ(streamed.output, "Once" + euro + fffd + "\n");
  auto plain = run_cli("generate --model " + model + " --prompt Once --temperature 0 --max-new-tokens 4 --n 2", "", false);
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_NE(plain.output.find("\nOnce" + euro + fffd + "\n"), std::string::npos) << plain.output;
  EXPECT_EQ(valid_utf8(plain.output), plain.output);
}

TEST(Cli, LabelExportWritesCompletionsThatAreNotUtf8) {
  TempDir tmp;
  const std::string cut = "\xE2\x82\xAC\xE2\x82", bytes = "a\xE2" "b\xFF";
  {
    LabelStore store(tmp / "labels.sqlite");
    const int64_t pid = store.add_prompt("Once");
    store.add_completions(pid, {cut, bytes});
    const auto t = store.next_task("ann");
    ASSERT_TRUE(t);
    store.submit({t->prompt_id, "ann", {{t->completion_ids[0]}, {t->completion_ids[1]}}, {}, ""});
  }
  const std::string db = (tmp / "labels.sqlite").string();
  auto r = run_cli("label export --db " + db + " --out " + (tmp / "r.jsonl").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto rankings = read_rankings(tmp / "r.jsonl");
  ASSERT_EQ(rankings.size(), 1u);
  EXPECT_EQ(rankings[0].completions, (std::vector<std::string>{valid_utf8(cut), valid_utf8(bytes)}));
  auto p = run_cli("label export --pairs --db " + db + " --out " + (tmp / "p.jsonl").string());
  ASSERT_EQ(p.exit_code, 0) << p.output;
  const auto pairs = read_preferences(tmp / "p.jsonl");
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(std::set<std::string>({pairs[0].chosen, pairs[0].rejected}),
            std::set<std::string>({valid_utf8(cut), valid_utf8(bytes)}));
}

// "" is in every text: as a stop string it would end generation after one token.
TEST(Cli, EmptyStopStringIsRejected) {
  auto r = run_cli("generate --model " + stories("stories260K.gguf") + " --max-new-tokens 8 --stop ''");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("empty stop string"), std::string::npos) << r.output;
  EXPECT_EQ(run_cli("generate --model " + stories("stories260K.gguf") + " --max-new-tokens 8 --stop x").exit_code, 0);
}

// A small config asking for a billion layers fails on the config, naming the file, before
// anything is sized by it (it used to allocate gigabytes and end in std::bad_alloc).
TEST(Cli, AbsurdLayerCountIsAOneLineErrorNamingTheConfig) {
  TempDir tmp;
  auto out = tmp / "hf";
  ASSERT_EQ(run_cli("convert --in " + stories("stories260K.gguf") + " --out " + out.string()).exit_code, 0);
  auto cfg = nlohmann::json::parse(read_file(out / "config.json"));
  cfg["num_hidden_layers"] = 1000000000;
  write_file_atomic(out / "config.json", cfg.dump());
  expect_clean_error(run_cli("generate --model " + out.string()), {"config.json", "num_layers", "1000000000"});
}
