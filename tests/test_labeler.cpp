// The simulated labeler: lexicon scores against hand-computed values, rankings against the
// Bradley-Terry / Plackett-Luce probabilities they are drawn from, distinct-n, and the demo's
// prompt file.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "data/datasets.h"
#include "feedback/labeler.h"

namespace rlhf {
namespace {

const SentimentLexicon& lexicon() {
  static const SentimentLexicon lex = SentimentLexicon::builtin();
  return lex;
}

TEST(Lexicon, HappySadNeutralSigns) {
  EXPECT_GT(lexicon().score("Lily smiled and gave her friend a big hug."), 0.0);
  EXPECT_LT(lexicon().score("Tom was sad because his toy was broken, and he cried."), 0.0);
  EXPECT_EQ(lexicon().score("The dog walked to the house on the hill."), 0.0);
  EXPECT_EQ(lexicon().score(""), 0.0);
}

TEST(Lexicon, HandComputedValue) {
  // Words: the, dog, was, happy, and, they, played -> 7 words.
  // Weights: happy = +2 (strong), played = +1 -> sum 3.  Score = 3 / sqrt(7 + 1) = 1.0606601...
  EXPECT_EQ(lexicon().words().at("happy"), 2.0);
  EXPECT_EQ(lexicon().words().at("played"), 1.0);
  EXPECT_NEAR(lexicon().score("The dog was happy and they played."), 3.0 / std::sqrt(8.0), 1e-12);
}

TEST(Lexicon, CaseInsensitiveAndPunctuation) {
  const double s = lexicon().score("happy friend");
  EXPECT_EQ(lexicon().score("HAPPY Friend"), s);
  EXPECT_EQ(lexicon().score("\"Happy!\" ...friend?"), s);       // punctuation splits, adds no words
  EXPECT_EQ(lexicon().score("happy,friend"), s);               // a comma separates words too
  EXPECT_EQ(lexicon().score("'happy' friend"), s);             // quotes are not part of a word
  // An apostrophe inside a word keeps it one word: "didn't" is neither "didn" nor "t".
  EXPECT_NEAR(lexicon().score("I didn't cry"), -1.0 / std::sqrt(4.0), 1e-12);
}

TEST(Lexicon, LengthAloneDoesNotBuyScore) {
  // Neutral filler lowers the score of the same sentiment.
  EXPECT_LT(lexicon().score("She was happy and the sun was up over the big green hill."),
            lexicon().score("She was happy."));
}

TEST(Lexicon, BuiltinIsBalanced) {
  int pos = 0, neg = 0;
  for (const auto& [w, weight] : lexicon().words()) {
    EXPECT_NE(weight, 0.0) << w;
    (weight > 0 ? pos : neg)++;
  }
  EXPECT_GE(pos, 50);
  EXPECT_GE(neg, 50);
}

TEST(Labeler, TemperatureZeroIsGoldOrderWithTies) {
  SimulatedLabeler labeler(SentimentLexicon::builtin(), 0.0, 1);
  LabelRequest req{"Once upon a time,",
                   {"the dog sat down.",          // 0 (neutral)
                    "she was sad and cried.",     // -4 / sqrt(6)
                    "they were happy.",           // +2 / sqrt(4) = 1
                    "the cat sat down."}};        // 0, tied with 0
  auto rankings = labeler.rank({req});
  ASSERT_EQ(rankings.size(), 1u);
  const Ranking& r = rankings[0];
  EXPECT_EQ(r.tiers, (std::vector<std::vector<int>>{{2}, {0, 3}, {1}}));
  EXPECT_EQ(r.prompt, req.prompt);
  EXPECT_EQ(r.completions, req.completions);
  EXPECT_EQ(r.labeler, "simulated");
  ASSERT_TRUE(r.extra.contains("gold_scores"));
  ASSERT_EQ(r.extra["gold_scores"].size(), 4u);
  EXPECT_NEAR(r.extra["gold_scores"][2].get<double>(), 1.0, 1e-12);
  EXPECT_NEAR(r.extra["gold_scores"][1].get<double>(), -4.0 / std::sqrt(6.0), 1e-12);
}

TEST(Labeler, NeedsTwoCompletions) {
  SimulatedLabeler labeler(SentimentLexicon::builtin(), 1.0, 1);
  EXPECT_THROW(labeler.rank({LabelRequest{"p", {"only one"}}}), Error);
  EXPECT_THROW(SimulatedLabeler(SentimentLexicon::builtin(), -1.0, 1), Error);
}

TEST(Labeler, HighTemperatureTopChoiceIsUniform) {
  SimulatedLabeler labeler(SentimentLexicon::builtin(), 1e6, 7);
  LabelRequest req{"p", {"happy happy joy", "sad crying", "the end", "a nice day"}};
  const int n = 4000;
  auto rankings = labeler.rank(std::vector<LabelRequest>(n, req));
  std::vector<int> top(4, 0);
  for (const Ranking& r : rankings) {
    ASSERT_EQ(r.tiers.size(), 4u);  // no ties when sampling
    top[r.tiers[0][0]]++;
  }
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(top[i] / double(n), 0.25, 0.03) << "completion " << i;
}

TEST(Labeler, PairwiseMatchesBradleyTerry) {
  const double T = 0.5;
  SimulatedLabeler labeler(SentimentLexicon::builtin(), T, 123);
  LabelRequest req{"p", {"a nice day", "a day"}};
  const double sA = lexicon().score(req.completions[0]), sB = lexicon().score(req.completions[1]);
  ASSERT_NEAR(sA, 1.0 / std::sqrt(4.0), 1e-12);  // nice = +1 over sqrt(3 + 1)
  ASSERT_EQ(sB, 0.0);
  const double expected = 1.0 / (1.0 + std::exp(-(sA - sB) / T));  // sigmoid(1) ~ 0.731
  const int n = 4000;
  int a_first = 0;
  for (const Ranking& r : labeler.rank(std::vector<LabelRequest>(n, req))) {
    ASSERT_EQ(r.tiers.size(), 2u);
    a_first += r.tiers[0][0] == 0;
  }
  EXPECT_NEAR(a_first / double(n), expected, 0.03);
}

TEST(Labeler, SameSeedSameRankings) {
  std::vector<LabelRequest> reqs(50, LabelRequest{"p", {"happy", "sad", "the end", "nice", "mean"}});
  SimulatedLabeler a(SentimentLexicon::builtin(), 1.0, 42), b(SentimentLexicon::builtin(), 1.0, 42);
  auto ra = a.rank(reqs), rb = b.rank(reqs);
  ASSERT_EQ(ra.size(), rb.size());
  bool any_different_from_first = false;
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i].tiers, rb[i].tiers);
    any_different_from_first |= ra[i].tiers != ra[0].tiers;
  }
  EXPECT_TRUE(any_different_from_first);  // it does sample
}

TEST(Distinct, HandExamples) {
  // "a b a b": bigrams (a b), (b a), (a b) -> 2 unique of 3.
  EXPECT_NEAR(distinct_n({"a b a b"}, 2), 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(distinct_n({"a b a b"}, 1), 2.0 / 4.0, 1e-12);
  // Case and punctuation do not make new words; n-grams do not cross texts:
  // "The cat." -> (the cat); "the CAT sat" -> (the cat), (cat sat) -> 2 unique of 3.
  EXPECT_NEAR(distinct_n({"The cat.", "the CAT sat"}, 2), 2.0 / 3.0, 1e-12);
  EXPECT_EQ(distinct_n({"one", ""}, 2), 0.0);
  EXPECT_EQ(distinct_n({}, 1), 0.0);
  EXPECT_EQ(distinct_n({"x y z"}, 3), 1.0);
}

TEST(Labeler, PromptFileIsValidAndNeutral) {
  const std::filesystem::path path = std::filesystem::path(RLHF_SOURCE_DIR) / "examples/happy_stories_prompts.jsonl";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::string line;
  std::set<std::string> prompts;
  int lines = 0;
  double score_sum = 0.0;
  while (std::getline(in, line)) {
    ++lines;
    auto j = nlohmann::json::parse(line);  // throws on a bad line
    ASSERT_TRUE(j.contains("prompt")) << "line " << lines;
    const std::string p = j["prompt"].get<std::string>();
    EXPECT_FALSE(p.empty());
    EXPECT_TRUE(prompts.insert(p).second) << "duplicate: " << p;
    score_sum += lexicon().score(p);
  }
  EXPECT_EQ(lines, 240);
  EXPECT_EQ(read_prompts(path).size(), 240u);
  // The demo measures how far training moves sentiment; the prompts must not set it.
  EXPECT_NEAR(score_sum / lines, 0.0, 0.05);
}

}  // namespace
}  // namespace rlhf
