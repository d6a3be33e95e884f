// The real pretrained stories260K model: both file formats load to the same model, and
// greedy decoding reproduces the reference outputs of the original implementation.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/io.h"
#include "generate/generator.h"
#include "model/model.h"
#include "test_util.h"

using namespace rlhf;

namespace {

const std::filesystem::path& dir() {
  static const auto d = test::data_dir() / "stories260K";
  return d;
}

LoadedModel& gguf_model() {
  static LoadedModel m = load_model(dir() / "stories260K.gguf");
  return m;
}

std::vector<std::vector<int32_t>> story_prompts(const Tokenizer& tok) {
  std::vector<std::vector<int32_t>> prompts;
  for (const char* p : {"Once upon a time", "Tom had a big red", "The cat", "One day, a little bird flew over the"})
    prompts.push_back(tok.encode(p, {.add_bos = true}));
  return prompts;
}

}  // namespace

TEST(Stories260K, GgufAndLlama2cGiveTheSameLogits) {
  auto bin = load_model(dir() / "stories260K.bin");
  auto& gguf = gguf_model();
  EXPECT_EQ(bin.config.hidden_size, 64);
  EXPECT_EQ(bin.config.num_layers, 5);
  EXPECT_EQ(bin.config.num_kv_heads, 4);
  torch::NoGradGuard g;
  auto ids = torch::tensor(std::vector<int64_t>{1, 403, 407, 261, 378, 432, 383, 286, 261}).unsqueeze(0);
  auto a = gguf.model->forward(ids), b = bin.model->forward(ids);
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << (a - b).abs().max().item<float>();
  // Both tokenizers agree too.
  const std::string text = "Once upon a time, Lily saw a big dog.";
  EXPECT_EQ(gguf.tokenizer->encode(text, {.add_bos = true}), bin.tokenizer->encode(text, {.add_bos = true}));
}

TEST(Stories260K, GreedyIdsEqualTheReference) {
  auto& m = gguf_model();
  auto ref = nlohmann::json::parse(read_file(dir() / "expected_greedy_ids.json"));
  auto expected = ref["greedy_next_ids_64"].get<std::vector<int32_t>>();
  GenerateOptions opt;
  opt.max_new_tokens = 64;
  opt.sampling.temperature = 0.0f;
  opt.stop_at_eos = false;
  auto out = generate(m.model, *m.tokenizer, {{ref["start_token"].get<int32_t>()}}, opt);
  EXPECT_EQ(out[0].tokens, expected);
}

TEST(Stories260K, GreedyTextEqualsTheReference) {
  // llama2.c run.c with its default 256 steps: BOS, then 256 greedy tokens, printed as text.
  auto bin = load_model(dir() / "stories260K.bin");
  GenerateOptions opt;
  opt.max_new_tokens = 256;
  opt.sampling.temperature = 0.0f;
  auto out = generate(bin.model, *bin.tokenizer, {{1}}, opt);
  std::string expected = read_file(dir() / "expected_greedy_t0.txt");
  while (!expected.empty() && expected.back() == '\n') expected.pop_back();
  EXPECT_EQ(out[0].text, expected);
}

TEST(Stories260K, KvCacheLogitsEqualFullForward) {
  auto& m = gguf_model();
  torch::NoGradGuard g;
  auto ids = torch::tensor(std::vector<int64_t>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298}).unsqueeze(0);
  auto full = m.model->forward(ids);
  auto cache = KVCache::allocate(m.config, 1, 16, torch::kFloat32);
  std::vector<torch::Tensor> parts{m.model->forward(ids.narrow(1, 0, 4), {}, {}, &cache)};
  for (int t = 4; t < ids.size(1); ++t) parts.push_back(m.model->forward(ids.narrow(1, t, 1), {}, {}, &cache));
  EXPECT_TRUE(torch::allclose(full, torch::cat(parts, 1), 1e-5, 1e-5));
}

TEST(Stories260K, BatchedGreedyWithPaddingEqualsOneAtATime) {
  auto& m = gguf_model();
  auto prompts = story_prompts(*m.tokenizer);
  GenerateOptions opt;
  opt.max_new_tokens = 40;
  opt.sampling.temperature = 0.0f;
  auto batched = generate(m.model, *m.tokenizer, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = generate(m.model, *m.tokenizer, {prompts[i]}, opt)[0];
    EXPECT_EQ(batched[i].tokens, single.tokens) << "prompt " << i;
    EXPECT_EQ(batched[i].text, single.text);
    EXPECT_FALSE(single.text.empty());
  }
}

TEST(Stories260K, SeededSamplingIsReproducibleAndVaries) {
  auto& m = gguf_model();
  auto prompts = story_prompts(*m.tokenizer);
  GenerateOptions opt;
  opt.max_new_tokens = 30;
  opt.sampling = {.temperature = 1.0f, .top_p = 0.9f};
  opt.seed = 11;
  auto a = generate(m.model, *m.tokenizer, prompts, opt);
  auto b = generate(m.model, *m.tokenizer, prompts, opt);
  opt.seed = 12;
  auto c = generate(m.model, *m.tokenizer, prompts, opt);
  int differ = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    differ += a[i].tokens != c[i].tokens;
    for (float lp : a[i].logprobs) EXPECT_LE(lp, 0.0f);
  }
  EXPECT_GT(differ, 0);
}

TEST(Stories260K, Bfloat16RunsCloseToFloat32) {
  auto bf = load_model(dir() / "stories260K.gguf", {.device = "cpu", .dtype = "bfloat16"});
  EXPECT_EQ(bf.model->dtype(), torch::kBFloat16);
  auto& f32 = gguf_model();
  torch::NoGradGuard g;
  auto ids = torch::tensor(std::vector<int64_t>{1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298}).unsqueeze(0);
  auto a = f32.model->forward(ids), b = bf.model->forward(ids);
  EXPECT_EQ(b.scalar_type(), torch::kFloat32);  // logits always come back in float32
  auto agree = (a.argmax(-1) == b.argmax(-1)).to(torch::kFloat32).mean().item<float>();
  EXPECT_GE(agree, 0.8f);
  EXPECT_LT((a - b).abs().max().item<float>(), 1.0f);
}
