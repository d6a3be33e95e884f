// Dataset readers: rankings -> pairs, HH-RLHF splitting (hand-written and the real test
// split), every malformed-line error, gzip input, chat-formatted SFT, the ranking round trip.
#include "data/datasets.h"

#include <unistd.h>
#include <zlib.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "core/io.h"
#include "test_util.h"

namespace rlhf {
namespace {

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

void write_gzip(const std::filesystem::path& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  gzclose(f);
}

// The message of the Error `fn` throws ("" and a test failure when it throws none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no Error thrown";
  return "";
}

Ranking ranking_of(std::vector<std::vector<int>> tiers) {
  Ranking r;
  r.prompt = "P";
  r.completions = {"c0", "c1", "c2", "c3"};
  r.tiers = std::move(tiers);
  return r;
}

// (chosen, rejected) as completion indices, for comparing pair sets.
std::set<std::pair<int, int>> index_pairs(const std::vector<PreferencePair>& pairs) {
  std::set<std::pair<int, int>> out;
  for (const auto& p : pairs) out.insert({p.chosen[1] - '0', p.rejected[1] - '0'});
  return out;
}

TEST(Datasets, StrictRankingGivesAllPairsBetterFirst) {
  const auto pairs = rankings_to_pairs({ranking_of({{2}, {0}, {3}, {1}})});
  ASSERT_EQ(pairs.size(), 6u);  // 4 choose 2
  const std::set<std::pair<int, int>> expected = {{2, 0}, {2, 3}, {2, 1}, {0, 3}, {0, 1}, {3, 1}};
  EXPECT_EQ(index_pairs(pairs), expected);
  for (const auto& p : pairs) {
    EXPECT_EQ(p.prompt, "P");
    EXPECT_EQ(p.group, 0u);
    // The indices name the same completions as the texts (flags travel by them).
    EXPECT_EQ(p.chosen_index, p.chosen[1] - '0');
    EXPECT_EQ(p.rejected_index, p.rejected[1] - '0');
  }
}

TEST(Datasets, TiedCompletionsGiveNoPair) {
  // [2, [0, 3], 1]: 6 pairs minus the tied 0-3.
  const auto pairs = rankings_to_pairs({ranking_of({{2}, {0, 3}, {1}}), ranking_of({{0, 1, 2, 3}}),
                                        ranking_of({{1}, {0}, {2}, {3}})});
  // The full tie adds none; the third ranking's 6 pairs carry its index as group.
  ASSERT_EQ(pairs.size(), 5u + 0u + 6u);
  const std::vector<PreferencePair> first(pairs.begin(), pairs.begin() + 5);
  const std::set<std::pair<int, int>> expected = {{2, 0}, {2, 3}, {2, 1}, {0, 1}, {3, 1}};
  EXPECT_EQ(index_pairs(first), expected);
  for (size_t i = 0; i < pairs.size(); ++i) EXPECT_EQ(pairs[i].group, i < 5 ? 0u : 2u) << i;
  EXPECT_TRUE(rankings_to_pairs({ranking_of({{0, 1, 2, 3}})}).empty());
}

TEST(Datasets, SplitsHandWrittenHHDialogue) {
  const std::string prompt = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:";
  // The replies share their first words, so the common prefix runs past the last marker.
  const auto pair = split_hh_pair(prompt + " Mix flour and water.", prompt + " Mix nothing, buy it.", "x");
  EXPECT_EQ(pair.prompt, prompt);
  EXPECT_EQ(pair.chosen, " Mix flour and water.");
  EXPECT_EQ(pair.rejected, " Mix nothing, buy it.");

  const std::string msg = error_of([] { split_hh_pair("\n\nHuman: a", "\n\nHuman: b", "pairs.jsonl:7"); });
  EXPECT_NE(msg.find("pairs.jsonl:7"), std::string::npos) << msg;
}

TEST(Datasets, ReadsAllOfTheRealHHTestSplit) {
  const auto path = test::data_dir() / "hh-rlhf-harmless-base-test" / "test.jsonl.gz";
  ReadStats stats;
  const auto pairs = read_preferences(path, {}, &stats);
  ASSERT_EQ(pairs.size(), 2312u);
  EXPECT_EQ(stats.lines, 2312u);
  EXPECT_EQ(stats.skipped, 0u);

  // prompt + chosen/rejected give back the original dialogues.
  const std::string text = read_maybe_gzip(path);
  size_t i = 0, differ = 0;
  for (size_t pos = 0, end; (end = text.find('\n', pos)) != std::string::npos; pos = end + 1, ++i) {
    const auto raw = nlohmann::json::parse(text.substr(pos, end - pos));
    const auto& p = pairs.at(i);
    ASSERT_TRUE(p.prompt.ends_with("\n\nAssistant:")) << i;
    EXPECT_EQ(p.prompt + p.chosen, raw["chosen"].get<std::string>()) << i;
    EXPECT_EQ(p.prompt + p.rejected, raw["rejected"].get<std::string>()) << i;
    EXPECT_EQ(p.group, 0u);
    differ += p.chosen != p.rejected;
  }
  EXPECT_EQ(i, 2312u);
  // Measured: all 2,312 pairs differ after the split.
  EXPECT_EQ(differ, 2312u);
  RecordProperty("pairs_that_differ", static_cast<int>(differ));
}

// Each malformed record sits on line 3, after a good line and an empty line.
struct BadCase {
  const char* name;
  const char* line;
  const char* field;   // "" when the message names none (invalid JSON, not an object)
  const char* words;   // part of the message
};

TEST(Datasets, MalformedPreferenceLinesNameFileLineAndField) {
  const std::string good = R"({"prompt": "p", "chosen": "a", "rejected": "b"})";
  const BadCase cases[] = {
      {"json", R"({"prompt": "p", "chosen": "a",)", "", "invalid JSON"},
      {"array", R"(["p", "a", "b"])", "", "expected a JSON object"},
      {"missing", R"({"prompt": "p", "chosen": "a"})", "rejected", "missing field"},
      {"type", R"({"prompt": "p", "chosen": 5, "rejected": "b"})", "chosen", "expected a string"},
      {"margin", R"({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"})", "margin", "number"},
      {"nohh", R"({"chosen": "a", "rejected": "b"})", "chosen", "Assistant"},
  };
  test::TempDir dir;
  for (const BadCase& c : cases) {
    const auto path = dir / (std::string(c.name) + ".jsonl");
    write_text(path, good + "\n\n" + c.line + "\n" + good + "\n");
    const std::string msg = error_of([&] { read_preferences(path); });
    EXPECT_NE(msg.find(path.string() + ":3: "), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(c.words), std::string::npos) << c.name << ": " << msg;
    if (*c.field) {
      EXPECT_NE(msg.find(std::string("(field '") + c.field + "')"), std::string::npos) << msg;
    }

    ReadStats stats;
    const auto pairs = read_preferences(path, {.skip_bad = true}, &stats);
    EXPECT_EQ(pairs.size(), 2u) << c.name;
    EXPECT_EQ(stats.lines, 3u) << c.name;
    EXPECT_EQ(stats.skipped, 1u) << c.name;
  }
}

TEST(Datasets, MalformedRankingLinesNameFileLineAndField) {
  const std::string good = R"({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, [0, 1]]})";
  const BadCase cases[] = {
      {"short", R"({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [2, 0]})", "ranking", "ranks 2"},
      {"long", R"({"prompt": "p", "completions": ["a", "b"], "ranking": [1, 0, 2]})", "ranking", "out of range"},
      {"dup", R"({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, [1, 0]]})", "ranking", "twice"},
      {"range", R"({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1, 3]})", "ranking", "out of range"},
      {"float", R"({"prompt": "p", "completions": ["a", "b", "c"], "ranking": [0, 1, 2.5]})", "ranking", "integers"},
      {"one", R"({"prompt": "p", "completions": ["a"], "ranking": [0]})", "completions", "at least 2"},
      {"ctype", R"({"prompt": "p", "completions": ["a", 7], "ranking": [0, 1]})", "completions[1]", "string"},
      {"noprompt", R"({"completions": ["a", "b"], "ranking": [0, 1]})", "prompt", "missing field"},
      {"labeler", R"({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1], "labeler": 3})", "labeler",
       "string"},
      // The labeling store's prompt id: 1.5 is no id (and must not become 1).
      {"prompt_id", R"({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1], "prompt_id": 1.5})", "prompt_id",
       "integer id, got 1.5"},
  };
  test::TempDir dir;
  for (const BadCase& c : cases) {
    const auto path = dir / (std::string(c.name) + ".jsonl");
    write_text(path, good + "\n\n" + c.line + "\n");
    const std::string msg = error_of([&] { read_rankings(path); });
    EXPECT_NE(msg.find(path.string() + ":3: "), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(c.words), std::string::npos) << c.name << ": " << msg;
    EXPECT_NE(msg.find(std::string("(field '") + c.field + "')"), std::string::npos) << c.name << ": " << msg;

    ReadStats stats;
    EXPECT_EQ(read_rankings(path, {.skip_bad = true}, &stats).size(), 1u) << c.name;
    EXPECT_EQ(stats.skipped, 1u) << c.name;
  }
}

TEST(Datasets, EmptyAndMissingFilesAreErrors) {
  test::TempDir dir;
  write_text(dir / "empty.jsonl", "");
  write_text(dir / "blank.jsonl", "\n  \n\r\n");
  for (const char* name : {"empty.jsonl", "blank.jsonl"}) {
    const std::string msg = error_of([&] { read_sft(dir / name); });
    EXPECT_EQ(msg, (dir / name).string() + ": no records");
  }
  // Nothing left after skipping is as empty, and says why.
  write_text(dir / "allbad.jsonl", "{\n[]\n");
  const std::string msg = error_of([&] { read_rankings(dir / "allbad.jsonl", {.skip_bad = true}); });
  EXPECT_EQ(msg, (dir / "allbad.jsonl").string() + ": no records (2 malformed lines skipped)");
  const std::string missing = error_of([&] { read_preferences(dir / "nope.jsonl"); });
  EXPECT_NE(missing.find((dir / "nope.jsonl").string()), std::string::npos) << missing;
}

TEST(Datasets, GzipReadsLikePlain) {
  test::TempDir dir;
  const std::string prefs = "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"margin\": 1.5}\n"
                            "\n"
                            "{\"chosen\": \"\\n\\nHuman: q\\n\\nAssistant: yes\", \"rejected\": "
                            "\"\\n\\nHuman: q\\n\\nAssistant: no\"}\n";
  write_text(dir / "p.jsonl", prefs);
  write_gzip(dir / "p.jsonl.gz", prefs);
  const auto plain = read_preferences(dir / "p.jsonl"), gz = read_preferences(dir / "p.jsonl.gz");
  ASSERT_EQ(plain.size(), 2u);
  ASSERT_EQ(gz.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(gz[i].prompt, plain[i].prompt);
    EXPECT_EQ(gz[i].chosen, plain[i].chosen);
    EXPECT_EQ(gz[i].rejected, plain[i].rejected);
    EXPECT_EQ(gz[i].margin, plain[i].margin);
  }
  EXPECT_EQ(plain[0].margin, 1.5);
  EXPECT_EQ(plain[1].prompt, "\n\nHuman: q\n\nAssistant:");
  EXPECT_EQ(plain[1].rejected, " no");

  // Line numbers in errors count the decompressed lines.
  write_gzip(dir / "bad.jsonl.gz", prefs + "{\"prompt\": 1}\n");
  const std::string msg = error_of([&] { read_preferences(dir / "bad.jsonl.gz"); });
  EXPECT_NE(msg.find((dir / "bad.jsonl.gz").string() + ":4: "), std::string::npos) << msg;
}

// `cat a.gz b.gz` is one gzip file of two members: zcat reads both, and so must we (it used to
// stop after the first: 64 records read as 8). Bytes after the last member that are not
// another member are damage: an Error naming the file, not records silently dropped.
TEST(Datasets, GzipReadsEveryMemberAndRefusesTrailingGarbage) {
  test::TempDir dir;
  std::string first, rest;
  for (int i = 0; i < 64; ++i) (i < 8 ? first : rest) += "{\"prompt\": \"p" + std::to_string(i) + "\"}\n";
  write_gzip(dir / "a.gz", first);
  write_gzip(dir / "b.gz", rest);
  const std::string a = read_file(dir / "a.gz"), b = read_file(dir / "b.gz");
  write_text(dir / "both.jsonl.gz", a + b);
  const auto prompts = read_prompts(dir / "both.jsonl.gz");
  ASSERT_EQ(prompts.size(), 64u);
  EXPECT_EQ(prompts[8], "p8");
  EXPECT_EQ(prompts[63], "p63");
  EXPECT_EQ(read_maybe_gzip(dir / "both.jsonl.gz"), first + rest);

  for (const std::string& junk : {std::string("garbage"), std::string(16, '\0'), std::string("\x1f")}) {
    write_text(dir / "junk.jsonl.gz", a + b + junk);
    const std::string msg = error_of([&] { read_prompts(dir / "junk.jsonl.gz"); });
    EXPECT_NE(msg.find((dir / "junk.jsonl.gz").string() + ": trailing garbage"), std::string::npos) << msg;
  }
  // A member cut short, first or last, is still an error.
  for (const std::string& cut : {a.substr(0, a.size() - 5) + b, a + b.substr(0, b.size() / 2)}) {
    write_text(dir / "cut.jsonl.gz", cut);
    const std::string msg = error_of([&] { read_prompts(dir / "cut.jsonl.gz"); });
    EXPECT_NE(msg.find((dir / "cut.jsonl.gz").string() + ": "), std::string::npos) << msg;
  }
}

TEST(Datasets, SftPromptCompletionAndMessages) {
  test::TempDir dir;
  const auto path = dir / "sft.jsonl";
  write_text(path,
             R"({"prompt": "Q: 2+2?", "completion": " 4"})"
             "\n"
             R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},)"
             R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"},)"
             R"( {"role": "assistant", "content": "Because."}]})"
             "\n");
  const auto hh = read_sft(path, {}, "hh");
  ASSERT_EQ(hh.size(), 2u);
  EXPECT_EQ(hh[0].prompt, "Q: 2+2?");
  EXPECT_EQ(hh[0].completion, " 4");
  EXPECT_EQ(hh[1].prompt, "Be brief.\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Why?\n\nAssistant:");
  EXPECT_EQ(hh[1].completion, " Because.");

  const auto chatml = read_sft(path, {}, "chatml");
  EXPECT_EQ(chatml[1].prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n"
            "<|im_start|>assistant\n");
  // The completion carries the end-of-turn markup, so the model learns to end its turn.
  EXPECT_EQ(chatml[1].completion, "Because.<|im_end|>\n");

  // Messages need a template, even with skip_bad (it is not a bad line but a missing option).
  for (bool skip : {false, true}) {
    const std::string msg = error_of([&] { read_sft(path, {.skip_bad = skip}); });
    EXPECT_NE(msg.find(path.string() + ":2: "), std::string::npos) << msg;
    EXPECT_NE(msg.find("chat template"), std::string::npos) << msg;
    EXPECT_NE(msg.find("(field 'messages')"), std::string::npos) << msg;
  }
  EXPECT_THROW(read_sft(path, {}, "vicuna"), Error);

  write_text(dir / "bad.jsonl", R"({"messages": [{"role": "user", "content": "Hi"}]})"
                                "\n"
                                R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]})"
                                "\n"
                                R"({"prompt": "p"})"
                                "\n");
  const std::string last = error_of([&] { read_sft(dir / "bad.jsonl", {}, "hh"); });
  EXPECT_NE(last.find(":1: the last message must be the assistant's (it is the completion) (field 'messages')"), std::string::npos) << last;
  ReadStats stats;
  EXPECT_THROW(read_sft(dir / "bad.jsonl", {.skip_bad = true}, "hh", &stats), Error);  // nothing left
  write_text(dir / "bad2.jsonl", R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]})"
                                 "\n");
  const std::string content = error_of([&] { read_sft(dir / "bad2.jsonl", {}, "hh"); });
  EXPECT_NE(content.find(":1: "), std::string::npos) << content;
  EXPECT_NE(content.find("(field 'messages[0].content')"), std::string::npos) << content;
  write_text(dir / "bad3.jsonl", R"({"prompt": "p"})"
                                 "\n");
  const std::string completion = error_of([&] { read_sft(dir / "bad3.jsonl"); });
  EXPECT_NE(completion.find(":1: missing field (field 'completion')"), std::string::npos) << completion;
}

TEST(Datasets, RankingsRoundTripKeepsTiesAndExtraFields) {
  test::TempDir dir;
  Ranking a = ranking_of({{2}, {0, 3}, {1}});
  a.labeler = "alice";
  a.extra = {{"flags", {"unsafe", "off-topic"}}, {"note", "c1 is rude"}, {"meta", {{"round", 3}}}};
  Ranking b;
  b.prompt = "Say \"hi\"\n";
  b.completions = {"h\xC3\xA9", ""};
  b.tiers = {{0, 1}};
  write_rankings(dir / "r.jsonl", {a, b});
  EXPECT_FALSE(std::filesystem::exists(dir / ("r.jsonl.tmp." + std::to_string(::getpid()))));

  // Ties are written as inner lists, single completions as plain indices.
  const std::string text = read_file(dir / "r.jsonl");
  EXPECT_NE(text.find(R"("ranking":[2,[0,3],1])"), std::string::npos) << text;

  const auto back = read_rankings(dir / "r.jsonl");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0].prompt, a.prompt);
  EXPECT_EQ(back[0].completions, a.completions);
  EXPECT_EQ(back[0].tiers, a.tiers);
  EXPECT_EQ(back[0].labeler, "alice");
  EXPECT_EQ(back[0].extra, a.extra);
  EXPECT_EQ(back[1].prompt, b.prompt);
  EXPECT_EQ(back[1].completions, b.completions);
  EXPECT_EQ(back[1].tiers, b.tiers);
  EXPECT_EQ(back[1].labeler, "");
  EXPECT_EQ(back[1].extra, nlohmann::json::object());
  // Extra fields play no part in the pairs.
  EXPECT_EQ(rankings_to_pairs(back).size(), 5u);

  // Generations may hold invalid UTF-8, which JSON cannot: it is saved as U+FFFD, not lost.
  b.completions[1] = "ok\xFF";
  write_rankings(dir / "r.jsonl", {b});
  EXPECT_EQ(read_rankings(dir / "r.jsonl")[0].completions[1], "ok\xEF\xBF\xBD");
}

}  // namespace
}  // namespace rlhf
