// Tokenizing prompt/completion examples (GPT-2 and the SentencePiece tok512), padding into
// batches with exact loss masks, truncation, and SFT packing.
#include "data/collate.h"

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace rlhf {
namespace {

std::unique_ptr<Tokenizer> gpt2() { return load_tokenizer(test::data_dir() / "gpt2-bpe"); }
std::unique_ptr<Tokenizer> tok512() { return load_tokenizer(test::data_dir() / "stories260K" / "tok512.bin"); }

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Collate, TokenizesPromptThenCompletionThenEos) {
  auto tok = gpt2();  // no BOS by default
  const auto p = tok->encode("Hello, my name is"), c = tok->encode(" Bob.");
  const auto ex = tokenize_example(*tok, "Hello, my name is", " Bob.", 0);
  EXPECT_EQ(ex.ids, concat(concat(p, c), {tok->eos_id()}));
  EXPECT_EQ(ex.prompt_length, static_cast<int64_t>(p.size()));
  EXPECT_EQ(tokenize_example(*tok, "Hello, my name is", " Bob.", 0, /*add_eos=*/false).ids, concat(p, c));
}

TEST(Collate, SentencePieceGetsBosOnceAndADummyPrefixPerPart) {
  auto tok = tok512();
  ASSERT_TRUE(tok->add_bos_default());
  const auto ex = tokenize_example(*tok, "Once upon a time", "there was a cat.", 0);
  const auto p = tok->encode("Once upon a time"), c = tok->encode("there was a cat.");
  EXPECT_EQ(ex.ids, concat(concat(concat({tok->bos_id()}, p), c), {tok->eos_id()}));
  EXPECT_EQ(ex.prompt_length, 1 + static_cast<int64_t>(p.size()));
  // The completion is encoded on its own, so it starts with "▁" (the accepted behaviour).
  EXPECT_EQ(tok->token_text(ex.ids[ex.prompt_length]).rfind("\xE2\x96\x81", 0), 0u);

  // A prompt that already starts with BOS (the llama2 template writes "<s>") gets no second one.
  const std::string prompt = apply_chat_template("llama2", {{"user", "Hi"}}, true, tok.get());
  const auto chat = tokenize_example(*tok, prompt, "Yo", 0);
  EXPECT_EQ(chat.ids[0], tok->bos_id());
  EXPECT_NE(chat.ids[1], tok->bos_id());
  EXPECT_EQ(std::count(chat.ids.begin(), chat.ids.end(), tok->bos_id()), 1);
}

TEST(Collate, TruncationKeepsThePromptEndThenTheCompletionStart) {
  auto tok = tok512();
  const std::string prompt = "Once upon a time there was a little girl named Lily who liked to play outside.";
  const auto p = tok->encode(prompt), c = tok->encode("She was happy.");
  ASSERT_GT(p.size(), 6u);
  const int64_t full = 1 + static_cast<int64_t>(p.size() + c.size()) + 1;

  // 5 tokens too many: BOS stays, the prompt loses its first 5 tokens.
  auto ex = tokenize_example(*tok, prompt, "She was happy.", full - 5);
  EXPECT_EQ(static_cast<int64_t>(ex.ids.size()), full - 5);
  EXPECT_EQ(ex.ids, concat(concat(concat({tok->bos_id()}, {p.begin() + 5, p.end()}), c), {tok->eos_id()}));
  EXPECT_EQ(ex.prompt_length, 1 + static_cast<int64_t>(p.size()) - 5);

  // Room for less than the completion: only BOS is left of the prompt, and the completion
  // keeps its start (and loses its EOS).
  ex = tokenize_example(*tok, prompt, "She was happy.", 3);
  EXPECT_EQ(ex.ids, (std::vector<int32_t>{tok->bos_id(), c[0], c[1]}));
  EXPECT_EQ(ex.prompt_length, 1);

  // GPT-2 has no BOS to keep.
  auto g = gpt2();
  const auto gp = g->encode(prompt);
  ex = tokenize_example(*g, prompt, " Yes", 4);
  EXPECT_EQ(ex.ids, (std::vector<int32_t>{gp[gp.size() - 2], gp.back(), g->encode(" Yes")[0], g->eos_id()}));
  EXPECT_EQ(ex.prompt_length, 2);
}

TEST(Collate, PadsRightWithMasksOnCompletionTokens) {
  auto tok = gpt2();
  const std::vector<TokenizedExample> examples = {
      tokenize_example(*tok, "The capital of France is", " Paris.", 0),
      tokenize_example(*tok, "2 + 2 =", " 4", 0),
      tokenize_example(*tok, "A long prompt about many things, then some more words", " and an answer that runs on.", 0),
  };
  const int32_t pad = tok->eos_id();
  const TokenBatch batch = collate(examples, pad);
  int64_t T = 0;
  for (const auto& ex : examples) T = std::max<int64_t>(T, static_cast<int64_t>(ex.ids.size()));
  ASSERT_EQ(batch.input_ids.sizes(), (std::vector<int64_t>{3, T}));
  EXPECT_EQ(batch.input_ids.dtype(), torch::kInt64);
  EXPECT_EQ(batch.attention_mask.sizes(), batch.input_ids.sizes());
  EXPECT_EQ(batch.loss_mask.dtype(), torch::kFloat32);
  EXPECT_EQ(batch.loss_mask.sizes(), batch.input_ids.sizes());
  ASSERT_EQ(batch.lengths.sizes(), (std::vector<int64_t>{3}));
  for (int64_t b = 0; b < 3; ++b) {
    const auto& ex = examples[b];
    const int64_t n = static_cast<int64_t>(ex.ids.size());
    EXPECT_EQ(batch.lengths[b].item<int64_t>(), n);
    for (int64_t t = 0; t < T; ++t) {
      const bool real = t < n;
      EXPECT_EQ(batch.input_ids[b][t].item<int64_t>(), real ? ex.ids[t] : pad) << b << "," << t;
      EXPECT_EQ(batch.attention_mask[b][t].item<int64_t>(), real ? 1 : 0) << b << "," << t;
      EXPECT_EQ(batch.loss_mask[b][t].item<float>(), real && t >= ex.prompt_length ? 1.0f : 0.0f) << b << "," << t;
    }
  }
  EXPECT_THROW(collate({}, pad), Error);
  EXPECT_THROW(collate(examples, -1), Error);
}

TEST(Collate, PackingFillsRowsAndMasksEveryPrompt) {
  auto tok = tok512();
  std::vector<TokenizedExample> examples;
  std::vector<int32_t> all_ids;
  std::vector<float> all_mask;
  for (const char* story : {"Tom had a red ball.", "The sun was hot.", "Lily saw a big dog and ran home fast."}) {
    examples.push_back(tokenize_example(*tok, "Write a story:", story, 0));
    const auto& ex = examples.back();
    all_ids.insert(all_ids.end(), ex.ids.begin(), ex.ids.end());
    for (size_t t = 0; t < ex.ids.size(); ++t) all_mask.push_back(static_cast<int64_t>(t) >= ex.prompt_length);
  }
  const int64_t seq_len = 16;
  const auto rows = pack_examples(examples, seq_len);
  ASSERT_EQ(rows.size(), (all_ids.size() + seq_len - 1) / seq_len);
  for (size_t r = 0; r + 1 < rows.size(); ++r) EXPECT_EQ(static_cast<int64_t>(rows[r].ids.size()), seq_len) << r;

  // The rows, read in order, are the examples end to end, masks included.
  const TokenBatch batch = collate(rows, tok->eos_id());
  std::vector<int32_t> packed_ids;
  std::vector<float> packed_mask;
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t t = 0; t < batch.lengths[r].item<int64_t>(); ++t) {
      packed_ids.push_back(static_cast<int32_t>(batch.input_ids[r][t].item<int64_t>()));
      packed_mask.push_back(batch.loss_mask[r][t].item<float>());
    }
  EXPECT_EQ(packed_ids, all_ids);
  EXPECT_EQ(packed_mask, all_mask);
  // Every BOS opens a prompt, and prompts are masked wherever a row boundary falls.
  for (size_t i = 0; i < all_ids.size(); ++i) {
    if (all_ids[i] == tok->bos_id()) {
      EXPECT_EQ(packed_mask[i], 0.0f) << i;
    }
  }
  // Layout (tok512): examples of 21, 19 and 28 tokens with 11-token prompts; row 3 starts
  // at token 48, inside the third prompt (40..50), so its first 3 tokens are masked.
  ASSERT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[0].prompt_length, examples[0].prompt_length);
  EXPECT_EQ(rows[3].prompt_length, 3);
  EXPECT_THROW(pack_examples(examples, 0), Error);
}

// Pairs sharing their prompt: one row per pair, the rejected tokens after the chosen ones
// with positions restarting after the prompt, and the indices that pick each completion's
// last token and each completion token's predictor.
TEST(Collate, SharedPromptRowsHoldPromptChosenRejected) {
  auto ex = [](std::vector<int32_t> ids, int64_t p) { return TokenizedExample{std::move(ids), p, {}}; };
  auto longs = [](std::vector<int64_t> v) { return torch::tensor(v, torch::kLong); };
  // Pair 0: prompt [1 7], chosen [8 9], rejected [5]. Pair 1: prompt [1], chosen [], rejected [3 4].
  auto b = collate_shared_prompt({ex({1, 7, 8, 9}, 2), ex({1}, 1)}, {ex({1, 7, 5}, 2), ex({1, 3, 4}, 1)}, 0);
  ASSERT_TRUE(b.has_value());
  const int64_t L = 5;
  EXPECT_TRUE(torch::equal(b->input_ids, longs({1, 7, 8, 9, 5, 1, 3, 4, 0, 0}).view({2, L})));
  EXPECT_TRUE(torch::equal(b->positions, longs({0, 1, 2, 3, 2, 0, 1, 2, 0, 0}).view({2, L})));
  EXPECT_TRUE(torch::equal(b->attention_mask, longs({1, 1, 1, 1, 1, 1, 1, 1, 0, 0}).view({2, L})));
  EXPECT_TRUE(torch::equal(b->skip_begin, longs({2, 0})));  // pair 1: nothing to skip
  EXPECT_TRUE(torch::equal(b->skip_end, longs({4, 0})));
  // Last tokens: chosen 0 at 3, chosen 1 (empty) at its prompt's end 0, rejected 0 at 4, rejected 1 at 2.
  EXPECT_TRUE(torch::equal(b->last, longs({3, L + 0, 4, L + 2})));
  // Completion tokens 8 9 | 5 | 3 4, predicted at 1 2 | 1 (the prompt's end) | 0 1.
  EXPECT_TRUE(torch::equal(b->target, longs({8, 9, 5, 3, 4})));
  EXPECT_TRUE(torch::equal(b->predictor, longs({1, 2, 1, L + 0, L + 1})));
  EXPECT_TRUE(torch::equal(b->sequence, longs({0, 0, 2, 3, 3})));
  // No sharing when the prompts differ (cut differently), a prompt is empty, or a row has its own mask.
  EXPECT_FALSE(collate_shared_prompt({ex({1, 7, 8}, 2)}, {ex({1, 6, 8}, 2)}, 0).has_value());
  EXPECT_FALSE(collate_shared_prompt({ex({1, 7, 8}, 2)}, {ex({1, 7, 8}, 1)}, 0).has_value());
  EXPECT_FALSE(collate_shared_prompt({ex({8}, 0)}, {ex({9}, 0)}, 0).has_value());
  auto masked = ex({1, 7, 8}, 2);
  masked.loss_mask = {0, 0, 1};
  EXPECT_FALSE(collate_shared_prompt({masked}, {ex({1, 7, 9}, 2)}, 0).has_value());
}

}  // namespace
}  // namespace rlhf
