// Rewards by configuration (rewards/rewards.h): the spec's grammar and its errors, each term on
// hand-made responses (answers extracted and compared, Lua tests in the sandbox, a format, the
// lexicon, a judge with scripted and with real option log-probabilities), the weighted sum, and
// the settings a spec needs checked before anything loads, on the library and the CLI.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "feedback/ai_feedback.h"
#include "feedback/labeler.h"
#include "rewards/rewards.h"
#include "scripted_llm.h"
#include "test_util.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::ScriptedLlm;
using rlhf::test::TempDir;

namespace {

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

// The message of the Error `f` throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string write_prompts(const TempDir& tmp, const std::vector<json>& rows) {
  std::string text;
  for (const auto& r : rows) text += r.dump() + "\n";
  write_file_atomic(tmp / "prompts.jsonl", text);
  return (tmp / "prompts.jsonl").string();
}

RewardSpec spec_of(const std::string& terms) {
  RewardSpec s;
  s.terms = terms;
  return s;
}

}  // namespace

TEST(Rewards, SpecParsesWeightsSignsAndSpaces) {
  auto t = parse_reward_terms("exact_answer + 0.2*format");
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "exact_answer");
  EXPECT_EQ(t[0].weight, 1.0);
  EXPECT_EQ(t[1].name, "format");
  EXPECT_EQ(t[1].weight, 0.2);
  t = parse_reward_terms("  0.5 * judge+0.5*model - 1e-1*lexicon ");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].weight, 0.5);
  EXPECT_EQ(t[1].name, "model");
  EXPECT_EQ(t[2].name, "lexicon");
  EXPECT_DOUBLE_EQ(t[2].weight, -0.1);
  t = parse_reward_terms("-2*format");
  EXPECT_EQ(t[0].weight, -2.0);
  EXPECT_EQ(parse_reward_terms("model + 0*format")[1].weight, 0.0);  // logged, not trained on
}

TEST(Rewards, SpecErrorsNameTheProblem) {
  for (const auto& [spec, says] : std::vector<std::pair<std::string, std::string>>{
           {"", "expected a term"},
           {"exact_answer + fromat", "unknown term 'fromat'"},
           {"model + 0.5*model", "'model' appears twice"},
           {"0.5 format", "expected '*'"},
           {"1e999*format", "bad weight"},
           {"model +", "expected a term at the end"},
           {"model format", "expected + or -"},
           {"model + *format", "expected a term"}}) {
    const std::string e = error_of([&] { parse_reward_terms(spec); });
    EXPECT_NE(e.find(says), std::string::npos) << "'" << spec << "': " << e;
  }
}

TEST(Rewards, ExactAnswerTakesTheLastNumberAndComparesNumbersAsNumbers) {
  const std::string p = kDefaultAnswerPattern;
  EXPECT_EQ(extract_answer("The answer is 1048.", p), "1048");
  EXPECT_EQ(extract_answer("3 + 4 = 7, so 7 * 2 = 14\n#### 14", p), "14");
  EXPECT_EQ(extract_answer("He owes -12.50 dollars", p), "-12.50");
  EXPECT_EQ(extract_answer("no digits here", p), std::nullopt);
  EXPECT_EQ(exact_answer_score("The answer is 1048.", 1048, p), 1.0);
  EXPECT_EQ(exact_answer_score("The answer is 1,048.", 1048, p), 1.0);
  EXPECT_EQ(exact_answer_score("The answer is 1048.0", json("1048"), p), 1.0);
  EXPECT_EQ(exact_answer_score("First 1048, then 1049.", 1048, p), 0.0);  // the last match counts
  EXPECT_EQ(exact_answer_score("#### -3", -3, p), 1.0);
  EXPECT_EQ(exact_answer_score("#### 3", -3, p), 0.0);
  EXPECT_EQ(exact_answer_score("I do not know.", 5, p), 0.0);
  EXPECT_EQ(exact_answer_score("", 5, p), 0.0);
  EXPECT_EQ(exact_answer_score("0.5", 0.5, p), 1.0);
  // Strings: trimmed, exact; a pattern with no group takes the whole match.
  EXPECT_EQ(exact_answer_score("Answer: Paris ", "Paris", "Answer: (\\w+)"), 1.0);
  EXPECT_EQ(exact_answer_score("Answer: paris", "Paris", "Answer: (\\w+)"), 0.0);
  EXPECT_EQ(extract_answer("x = yes", "yes|no"), "yes");
  EXPECT_TRUE(answers_equal(" Paris ", json("Paris")));
  EXPECT_FALSE(answers_equal("Pari", json("Paris")));
}

TEST(Rewards, LuaTestsScoreTheShareThatPassAndNeverCrash) {
  const SandboxLimits fast{.max_instructions = 1'000'000, .max_seconds = 1};
  const std::vector<std::string> tests = {"assert(add(2, 3) == 5)", "assert(add(-1, 1) == 0)", "assert(add(2, 2) == 5)"};
  EXPECT_DOUBLE_EQ(lua_tests_score("function add(a, b) return a + b end", tests, fast), 2.0 / 3);
  // The fenced block is the program; the prose around it is not.
  EXPECT_DOUBLE_EQ(lua_tests_score("Here you go:\n```lua\nfunction add(a, b) return a + b end\n```\nIt adds.", tests, fast),
                   2.0 / 3);
  EXPECT_EQ(lua_program("```lua\nx = 1\n```"), "x = 1\n");
  EXPECT_EQ(lua_program("```lua\nx = 1"), "x = 1");  // cut off mid-block: to the end
  EXPECT_DOUBLE_EQ(lua_tests_score("function add(a, b) return a - b end", tests, fast), 0.0);
  EXPECT_DOUBLE_EQ(lua_tests_score("function add(a, b) return a + end", tests, fast), 0.0);     // syntax error
  EXPECT_DOUBLE_EQ(lua_tests_score("error('boom')\nfunction add(a, b) return a + b end", tests, fast), 0.0);
  EXPECT_DOUBLE_EQ(lua_tests_score("while true do end", tests, fast), 0.0);                    // instruction limit
  EXPECT_DOUBLE_EQ(lua_tests_score("local t = {} while true do t[#t + 1] = ('x'):rep(1000) end", tests, fast), 0.0);
  EXPECT_DOUBLE_EQ(lua_tests_score("os.exit(1)", tests, fast), 0.0);  // no os in the sandbox: the process lives on
  EXPECT_DOUBLE_EQ(lua_tests_score("function add(a, b) return a + b end", {}, fast), 0.0);
}

TEST(Rewards, FormatAndLexiconTerms) {
  const std::string pattern = "The answer is -?[0-9]+\\.";
  EXPECT_EQ(format_score("Let me see. The answer is -4.", pattern), 1.0);
  EXPECT_EQ(format_score("The answer is four.", pattern), 0.0);
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "p"}}});
  RewardSpec s = spec_of("lexicon");
  auto r = make_reward(s, path);
  const std::vector<std::string> responses = {"a happy kind friend", "a sad mean day", ""};
  const auto v = r.scores({"p", "p", "p"}, responses);
  const auto lex = SentimentLexicon::builtin();
  for (size_t i = 0; i < responses.size(); ++i) EXPECT_DOUBLE_EQ(v[i], lex.score(responses[i]));
  EXPECT_GT(v[0], 0);
  EXPECT_LT(v[1], 0);
}

TEST(Rewards, TheWeightedSumAndEachTermsMeanOfTheLastCall) {
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "2+2?"}, {"answer", 4}, {"tests", {"assert(f() == 4)"}}},
                                        {{"prompt", "3*3?"}, {"answer", "9"}, {"tests", {"assert(f() == 9)", "assert(f)"}}},
                                        {{"prompt", "2+2?"}, {"answer", 4.0}, {"tests", {"assert(f() == 4)"}}}});
  RewardSpec s = spec_of("exact_answer + 0.25*format - 0.5*lua_tests");
  s.format_pattern = "The answer is -?[0-9]+\\.";
  auto r = make_reward(s, path);
  EXPECT_FALSE(r.model_only());
  const std::vector<std::string> prompts = {"2+2?", "3*3?", "3*3?"};
  const std::vector<std::string> responses = {"The answer is 4.", "function f() return 9 end -- 8",
                                              "```lua\nfunction f() return 9 end\n```\nThe answer is 9."};
  const auto v = r.scores(prompts, responses);
  // exact_answer (1, 0, 1); format (1, 0, 1); lua_tests (0: "The answer..." is no Lua, 1, 1)
  ASSERT_EQ(v.size(), 3u);
  EXPECT_DOUBLE_EQ(v[0], 1 + 0.25 * 1 - 0.5 * 0);
  EXPECT_DOUBLE_EQ(v[1], 0 + 0.25 * 0 - 0.5 * 1);
  EXPECT_DOUBLE_EQ(v[2], 1 + 0.25 * 1 - 0.5 * 1);
  const auto means = r.last_means();
  EXPECT_DOUBLE_EQ(means.at("exact_answer"), 2.0 / 3);
  EXPECT_DOUBLE_EQ(means.at("format"), 2.0 / 3);
  EXPECT_DOUBLE_EQ(means.at("lua_tests"), 2.0 / 3);
  ASSERT_EQ(r.last_term_scores().size(), 3u);
  EXPECT_EQ(r.last_term_scores()[2], (std::vector<double>{0, 1, 1}));
  // A prompt the file does not have: the verifiers cannot know its answer.
  EXPECT_NE(error_of([&] { r.scores({"5+5?"}, {"10"}); }).find("is not in"), std::string::npos);
}

TEST(Rewards, MissingSettingsAndFieldsAreErrorsBeforeAnythingLoads) {
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "a"}, {"answer", 1}}, {{"prompt", "b"}}});
  auto err = [&](const RewardSpec& s, const std::string& p, const RewardContext& ctx = {}) {
    return error_of([&] { check_reward_spec(s, p, ctx); });
  };
  EXPECT_NE(err(spec_of("model"), path).find("'model' needs `reward_model`"), std::string::npos);
  EXPECT_EQ(err(spec_of("model"), path, {.reward_model = "rm"}), "");
  auto e = err(spec_of("exact_answer"), path);
  EXPECT_NE(e.find("prompts.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("'answer'"), std::string::npos) << e;
  RewardSpec other = spec_of("exact_answer");
  other.answer_field = "gold";
  EXPECT_NE(err(other, path).find("'gold'"), std::string::npos);
  EXPECT_NE(err(spec_of("lua_tests"), path).find("'tests'"), std::string::npos);
  EXPECT_NE(err(spec_of("judge"), path).find("needs `judge_model`"), std::string::npos);
  EXPECT_NE(err(spec_of("format"), path).find("needs `format_pattern`"), std::string::npos);
  RewardSpec bad_re = spec_of("format");
  bad_re.format_pattern = "(unclosed";
  EXPECT_NE(err(bad_re, path).find("not a valid regex"), std::string::npos);
  RewardSpec no_response = spec_of("judge");
  no_response.judge_model = "m";
  no_response.judge_template = "Is {prompt} good?";
  EXPECT_NE(err(no_response, path).find("{response}"), std::string::npos);
  // One prompt text with two different gold answers: the reward sees the text alone.
  const auto twice = write_prompts(tmp, {{{"prompt", "a"}, {"answer", 1}}, {{"prompt", "a"}, {"answer", 2}}});
  e = err(spec_of("exact_answer"), twice);
  EXPECT_NE(e.find("prompts.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("prompts.jsonl:1"), std::string::npos) << e;
  const auto bad_tests = write_prompts(tmp, {{{"prompt", "a"}, {"tests", "assert(true)"}}});
  EXPECT_NE(err(spec_of("lua_tests"), bad_tests).find("non-empty list"), std::string::npos);
  const auto bad_answer = write_prompts(tmp, {{{"prompt", "a"}, {"answer", {1, 2}}}});
  EXPECT_NE(err(spec_of("exact_answer"), bad_answer).find("a number or a string"), std::string::npos);
}

TEST(Rewards, TheJudgeGivesTheGoodOptionsProbabilityOfTheFilledTemplate) {
  auto llm = std::make_shared<ScriptedLlm>();
  // (A) 3x as likely as (B) when the response is kind, 1/3 as likely otherwise.
  llm->logprobs = [](const std::string& q, const std::vector<std::string>&) -> std::optional<std::vector<double>> {
    return q.find("kind") != std::string::npos ? std::vector<double>{std::log(3.0), 0.0} : std::vector<double>{0.0, std::log(3.0)};
  };
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "Say hi."}}});
  RewardSpec s = spec_of("judge + 0.5*lexicon");
  s.judge_template = "Q: {prompt}\nR: {response}\nGood? (A) yes (B) no\nThe answer is: (";
  auto r = make_reward(s, path, {.judge = std::make_shared<FeedbackModel>(llm)});
  const auto v = r.scores({"Say hi.", "Say hi."}, {"  a kind hello\n", "go away"});
  const auto lex = SentimentLexicon::builtin();
  EXPECT_NEAR(v[0], 0.75 + 0.5 * lex.score("  a kind hello\n"), 1e-12);
  EXPECT_NEAR(v[1], 0.25 + 0.5 * lex.score("go away"), 1e-12);
  ASSERT_EQ(llm->scored.size(), 2u);
  EXPECT_EQ(llm->scored[0], "Q: Say hi.\nR: a kind hello\nGood? (A) yes (B) no\nThe answer is: (");
  EXPECT_EQ(llm->scored[1], "Q: Say hi.\nR: go away\nGood? (A) yes (B) no\nThe answer is: (");
  EXPECT_NEAR(r.last_means().at("judge"), 0.5, 1e-12);
}

TEST(Rewards, AJudgeModelInProcessGivesAProbabilityPerResponse) {
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "Once upon a time"}}});
  RewardSpec s = spec_of("judge");
  s.judge_model = stories_gguf();
  auto r = make_reward(s, path);
  const auto v = r.scores({"Once upon a time", "Once upon a time"}, {"there was a happy dog.", "the end"});
  ASSERT_EQ(v.size(), 2u);
  for (double p : v) {
    EXPECT_GT(p, 0.0);
    EXPECT_LT(p, 1.0);
  }
  EXPECT_NE(v[0], v[1]);  // the response reaches the question
}

TEST(Rewards, PpoWithABadSpecStopsWithAClearMessage) {
  TempDir tmp;
  const auto path = write_prompts(tmp, {{{"prompt", "2+2?"}, {"answer", 4}}, {{"prompt", "3+3?"}}});
  const std::string base = "ppo --model " + stories_gguf() + " --train-data " + path + " --run-dir " +
                           (tmp / "run").string() + " ";
  for (const auto& [flags, says] : std::vector<std::pair<std::string, std::string>>{
           {"--reward 'exact_answer + 0.1*fromat'", "unknown term 'fromat'"},
           {"--reward model", "`reward_model`"},
           {"--reward exact_answer", "prompts.jsonl:2"},
           {"--reward 'format + lexicon'", "`format_pattern`"}}) {
    const auto r = test::run_cli(base + flags);
    EXPECT_EQ(r.exit_code, 1) << flags << ": " << r.output;
    EXPECT_NE(r.output.find(says), std::string::npos) << flags << ": " << r.output;
    EXPECT_FALSE(std::filesystem::exists(tmp / "run" / "metrics.jsonl")) << flags;
  }
  // The pipeline checks its PPO stage's reward before the first stage: its prompts carry no gold answers.
  write_file_atomic(tmp / "p.toml", "policy = \"" + stories_gguf() + "\"\nprompts = \"" + path + "\"\nrun_dir = \"" +
                                        (tmp / "pipe").string() + "\"\n[ppo]\nreward = \"model + exact_answer\"\n");
  for (const auto& [flags, says] : std::vector<std::pair<std::string, std::string>>{
           {"", "'exact_answer' needs gold fields"}, {"--ppo.reward 'model + 0.5*judge'", "`judge_model`"}}) {
    const auto r = test::run_cli("pipeline " + (tmp / "p.toml").string() + " " + flags);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(says), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(tmp / "pipe" / "rankings.jsonl"));
  }
  // The settings are listed with the command's help.
  const auto help = test::run_cli("ppo --help");
  for (const char* flag : {"--reward ", "--answer-field", "--answer-pattern", "--tests-field", "--format-pattern",
                           "--judge-model", "--judge-template", "--lua-max-seconds"})
    EXPECT_NE(help.output.find(flag), std::string::npos) << flag;
}
