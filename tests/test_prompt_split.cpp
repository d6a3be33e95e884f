// Two rules every stage shares: how a prompt becomes ids (encode_prompt, checked on both
// tokenizer families), and how preference pairs are held out (whole prompts, so a held-out
// pair's prompt and completions are never trained on).
#include <gtest/gtest.h>

#include <set>

#include "data/datasets.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "trainers/trainer_util.h"

using namespace rlhf;

TEST(EncodePrompt, LlamaStyleTokenizersGetBosOnce) {
  auto tok = load_tokenizer(test::data_dir() / "stories260K" / "tok512.bin");
  ASSERT_TRUE(tok->add_bos_default());
  const auto plain = tok->encode("Once upon a time", {.add_bos = false});
  auto with_bos = plain;
  with_bos.insert(with_bos.begin(), tok->bos_id());
  EXPECT_EQ(encode_prompt(*tok, "Once upon a time"), with_bos);  // as tokenizer(text) in Python
  EXPECT_EQ(encode_prompt(*tok, ""), std::vector<int32_t>{tok->bos_id()});
  EXPECT_EQ(encode_prompt(*tok, "<s>Once upon a time"), with_bos);  // BOS written in the text: not doubled
}

TEST(EncodePrompt, Gpt2StyleTokenizersGetNoBosUnlessThePromptIsEmpty) {
  auto tok = load_tokenizer(test::data_dir() / "gpt2-bpe");
  ASSERT_FALSE(tok->add_bos_default());
  ASSERT_EQ(tok->bos_id(), 50256);
  EXPECT_EQ(encode_prompt(*tok, "Hello world"), (std::vector<int32_t>{15496, 995}));  // no <|endoftext|> in front
  EXPECT_EQ(encode_prompt(*tok, ""), std::vector<int32_t>{50256});                    // something to start from
  EXPECT_EQ(encode_prompt(*tok, "<|endoftext|>Hello world"), (std::vector<int32_t>{50256, 15496, 995}));
}

TEST(TrainEvalSplit, PreferencePairsAreHeldOutByWholePrompts) {
  // 40 rankings of 4 completions -> 6 pairs each. Split pair by pair, nearly every held-out
  // pair's prompt (and its completions) would also be in training.
  std::vector<Ranking> rankings;
  for (int i = 0; i < 40; ++i)
    rankings.push_back({"prompt " + std::to_string(i), {"a", "b", "c", "d"}, {{0}, {1}, {2}, {3}}, "x"});
  auto pairs = rankings_to_pairs(rankings);
  ASSERT_EQ(pairs.size(), 240u);
  TrainConfig cfg;
  cfg.eval_fraction = 0.2;
  auto no_file = [](const std::string&) { return std::vector<PreferencePair>{}; };
  auto [train, eval] = train_eval_split(cfg, pairs, no_file, pair_prompt);
  EXPECT_EQ(train.size() + eval.size(), 240u);
  EXPECT_EQ(eval.size(), 48u);  // 8 whole prompts of 6 pairs
  std::set<std::string> train_prompts;
  for (const auto& p : train) train_prompts.insert(p.prompt);
  for (const auto& p : eval) EXPECT_FALSE(train_prompts.contains(p.prompt)) << p.prompt;
  // Seeded: the same split again, another with another seed.
  EXPECT_EQ(train_eval_split(cfg, pairs, no_file, pair_prompt).second.front().prompt, eval.front().prompt);
}

TEST(TrainEvalSplit, OneGroupPerItemIsAPlainSeededShuffle) {
  std::vector<int> items(10);
  std::iota(items.begin(), items.end(), 0);
  TrainConfig cfg;
  cfg.eval_fraction = 0.3;
  auto [train, eval] = train_eval_split(cfg, items, [](const std::string&) { return std::vector<int>{}; });
  EXPECT_EQ(train.size(), 7u);
  EXPECT_EQ(eval.size(), 3u);
  std::set<int> all(train.begin(), train.end());
  all.insert(eval.begin(), eval.end());
  EXPECT_EQ(all.size(), 10u);
}
