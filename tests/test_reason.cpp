// Chain-of-thought (answer extraction, normalisation, the self-consistency vote) and PAL
// (program extraction, the sandbox's verdicts), driven by a scripted Llm, and one run of each
// through a real model.
#include <gtest/gtest.h>

#include "apps/app_io.h"
#include "apps/cot.h"
#include "apps/llm.h"
#include "apps/pal.h"
#include "core/error.h"
#include "test_util.h"

using namespace rlhf;

namespace {

// Returns scripted texts in order (completion j of prompt i is texts[(i * n + j) % size]) and
// records every call.
struct ScriptedLlm : Llm {
  std::vector<std::string> texts;
  int calls = 0;
  std::vector<std::string> prompts;
  CompletionParams params;

  explicit ScriptedLlm(std::vector<std::string> t) : texts(std::move(t)) {}
  std::vector<std::vector<Completion>> complete(const std::vector<std::string>& p, const CompletionParams& c) override {
    ++calls;
    prompts = p;
    params = c;
    std::vector<std::vector<Completion>> out(p.size());
    for (size_t i = 0; i < p.size(); ++i)
      for (int j = 0; j < c.n; ++j) out[i].push_back({texts[(i * c.n + j) % texts.size()], "stop", 1});
    return out;
  }
  std::optional<std::vector<std::vector<double>>> continuation_logprobs(const std::vector<std::string>&,
                                                                        const std::vector<std::string>&) override {
    return std::nullopt;
  }
  std::string describe() const override { return "scripted"; }
};

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

}  // namespace

TEST(Cot, ExtractsTheTextAfterTheLastAnswerMarker) {
  EXPECT_EQ(extract_answer(" There are 15 trees. So 21 - 15 = 6. The answer is 6."), "6");
  EXPECT_EQ(extract_answer("The answer is 5. Wait, no.\nthe answer is 1,234.\nQ: next"), "1234");
  EXPECT_EQ(extract_answer("THE ANSWER IS: 12.0"), "12");
  EXPECT_EQ(extract_answer("The answer is 3.5."), "3.5");
  EXPECT_EQ(extract_answer("The answer is 6. Q: How many"), "6");
  EXPECT_EQ(extract_answer("The answer is Paris."), "Paris");
  EXPECT_EQ(extract_answer("So the answer is $18."), "18");
}

TEST(Cot, FallsBackToTheLastNumber) {
  EXPECT_EQ(extract_answer("3 + 4 = 7 apples, and then 8 more"), "8");
  EXPECT_EQ(extract_answer("The answer is\n42 it is"), "42");  // nothing after the marker on its line
  EXPECT_EQ(extract_answer("she paid 2,500.00 dollars"), "2500");
  EXPECT_EQ(extract_answer("no numbers here"), "");
  EXPECT_EQ(extract_answer(""), "");
}

TEST(Cot, NormalisesNumbersOnly) {
  EXPECT_EQ(normalize_answer("1,234"), "1234");
  EXPECT_EQ(normalize_answer(" 12.0 "), "12");
  EXPECT_EQ(normalize_answer("-0.50"), "-0.5");
  EXPECT_EQ(normalize_answer("0.05"), "0.05");
  EXPECT_EQ(normalize_answer("007"), "7");
  EXPECT_EQ(normalize_answer("-0.0"), "0");
  EXPECT_EQ(normalize_answer("1,234,567"), "1234567");
  EXPECT_EQ(normalize_answer("12 apples"), "12 apples");
  EXPECT_EQ(normalize_answer("1,23"), "1,23");  // not a thousands separator: left alone
}

TEST(Cot, MajorityVoteTiesGoToTheEarliest) {
  EXPECT_EQ(majority_vote({"7", "1234", "7", "1234"}), "7");
  EXPECT_EQ(majority_vote({"7", "1234", "1234"}), "1234");
  EXPECT_EQ(majority_vote({"", "", "5"}), "5");  // paths without an answer do not vote
  EXPECT_EQ(majority_vote({"", ""}), "");
  EXPECT_EQ(majority_vote({}), "");
}

TEST(Cot, SelfConsistencyVotesOverNPathsFromOneCall) {
  ScriptedLlm llm({"14 + 6 = 20. The answer is 20.", "The answer is 7.", "so 20.0 in all", "The answer is 7.",
                   "The answer is 20", "nothing useful"});
  CotOptions o;
  o.n = 6;
  auto results = run_cot(llm, {"How many?"}, o);
  EXPECT_EQ(llm.calls, 1);
  EXPECT_EQ(llm.params.n, 6);
  EXPECT_FLOAT_EQ(llm.params.temperature, 0.7f);  // the default once n > 1
  ASSERT_EQ(results.size(), 1u);
  const auto& r = results[0];
  ASSERT_EQ(r.paths.size(), 6u);
  EXPECT_EQ(r.answer, "20");
  EXPECT_EQ(r.votes, (std::map<std::string, int>{{"20", 3}, {"7", 2}}));
  EXPECT_EQ(r.paths[5].answer, "");
  auto j = to_json(r);
  EXPECT_EQ(j["reasoning"], "14 + 6 = 20. The answer is 20.");
  EXPECT_EQ(j["votes"]["20"], 3);
  EXPECT_EQ(j["paths"][1]["answer"], "7");
  // The prompt is the template with the question, ending where the model continues.
  EXPECT_TRUE(llm.prompts[0].ends_with("\n\nQ: How many?\nA: Let's think step by step.")) << llm.prompts[0];
  o.temperature = 0;
  EXPECT_THROW(run_cot(llm, {"q"}, o), Error);  // n > 1 paths of greedy decoding would all be one
}

TEST(Cot, RunsWithARealModel) {
  LocalLlm llm(stories_gguf());
  CotOptions o;
  o.n = 3;
  o.max_tokens = 12;
  auto results = run_cot(llm, {"Tom has 3 apples and gets 2 more. How many?", "Once upon a time"}, o);
  ASSERT_EQ(results.size(), 2u);
  for (const auto& r : results) {
    ASSERT_EQ(r.paths.size(), 3u);
    int voted = 0;
    for (const auto& p : r.paths) EXPECT_EQ(p.answer, extract_answer(p.text));
    for (const auto& [answer, count] : r.votes) voted += count;
    EXPECT_LE(voted, 3);
  }
}

TEST(Pal, ExtractsTheProgramBeforeTheClosingFence) {
  EXPECT_EQ(extract_program("local a = 1\nreturn a\n```\nQ: next"), "local a = 1\nreturn a\n");
  EXPECT_EQ(extract_program("return 2\n```  \r\nmore"), "return 2\n");
  EXPECT_EQ(extract_program("return 3"), "return 3");
  EXPECT_EQ(extract_program("local s = '```lua'\nreturn s"), "local s = '```lua'\nreturn s");  // not a fence line
}

TEST(Pal, RunsEachProgramAndReportsWhyOneFailed) {
  ScriptedLlm llm({"local apples = 3\nlocal more = 4\nprint('apples', apples)\nreturn apples * more\n```\nQ: junk",
                   "while true do end", "return nil + 1", "return 1 +", "\n```", "return 10 / 4"});
  PalOptions o;
  o.limits.max_instructions = 1'000'000;
  auto r = run_pal(llm, {"good", "loops", "errors", "syntax", "empty", "after"}, o);
  EXPECT_EQ(llm.calls, 1);
  EXPECT_EQ(llm.params.stop, std::vector<std::string>{"\n```"});
  EXPECT_TRUE(llm.prompts[1].ends_with("\n\nQ: loops\n\n```lua\n")) << llm.prompts[1];
  ASSERT_EQ(r.size(), 6u);
  EXPECT_EQ(r[0].status, "ok");
  EXPECT_EQ(r[0].answer, "12");
  EXPECT_EQ(r[0].program, "local apples = 3\nlocal more = 4\nprint('apples', apples)\nreturn apples * more\n");
  EXPECT_EQ(r[0].output, "apples\t3\n");
  EXPECT_EQ(r[1].status, "instruction limit");
  EXPECT_EQ(r[1].answer, "");
  EXPECT_EQ(r[2].status.rfind("error: runtime error: program:1: attempt to perform arithmetic on a nil value", 0), 0u)
      << r[2].status;
  EXPECT_EQ(r[3].status.rfind("error: syntax error: ", 0), 0u) << r[3].status;
  EXPECT_EQ(r[4].status, "error: no program");
  EXPECT_EQ(r[5].status, "ok");  // the next question is still answered
  EXPECT_EQ(r[5].answer, "2.5");
  auto j = to_json(r[1]);
  EXPECT_EQ(j["status"], "instruction limit");
  EXPECT_EQ(j["program"], "while true do end");
}

TEST(AppIo, FillTemplateReplacesEachPlaceholderOnce) {
  EXPECT_EQ(fill_template("Q: {question}\n{context}|{other}", {{"question", "a {context}"}, {"context", "C"}}),
            "Q: a {context}\nC|{other}");
}
