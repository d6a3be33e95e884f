// Batched generation invariants on a small random model: a left-padded batch gives each
// sequence the same tokens and logprobs as generating it alone, greedy and sampled.
#include <gtest/gtest.h>

#include "core/error.h"
#include "generate/generator.h"

using namespace rlhf;

namespace {

// Minimal tokenizer for the tests: token i is the text "<i>"; EOS is id 2.
class IdTokenizer : public Tokenizer {
 public:
  IdTokenizer() { eos_id_ = 2; bos_id_ = 1; }
  std::vector<int32_t> encode(const std::string&, const EncodeOptions&) const override { return {}; }
  std::string decode(const std::vector<int32_t>& ids, bool) const override {
    std::string s;
    for (auto i : ids) s += token_bytes(i);
    return s;
  }
  std::string token_bytes(int32_t id) const override { return "<" + std::to_string(id) + ">"; }
  int64_t vocab_size() const override { return 50; }
  std::string token_text(int32_t id) const override { return token_bytes(id); }
  int32_t token_id(const std::string&) const override { return -1; }
  bool is_special(int32_t) const override { return false; }
  nlohmann::json to_hf_json() const override { return {}; }
  std::string hf_tokenizer_class() const override { return "PreTrainedTokenizerFast"; }
};

Transformer random_model() {
  ModelConfig c;
  c.vocab_size = 50; c.hidden_size = 32; c.num_layers = 2; c.num_heads = 4; c.num_kv_heads = 2;
  c.head_dim = 8; c.intermediate_size = 48; c.max_position_embeddings = 128;
  torch::manual_seed(3);
  Transformer m(c);
  torch::NoGradGuard g;
  for (auto& p : m->parameters()) p.normal_(0, 0.5);
  m->eval();
  return m;
}

void expect_batch_equals_single(const SamplingParams& sp) {
  auto m = random_model();
  IdTokenizer tok;
  std::vector<std::vector<int32_t>> prompts{{1, 5, 6, 7, 8, 9}, {1, 30}, {1, 11, 12}, {1, 40, 41, 42}};
  GenerateOptions opt;
  opt.max_new_tokens = 20;
  opt.sampling = sp;
  opt.seed = 99;
  auto batched = generate(m, tok, prompts, opt);
  for (size_t i = 0; i < prompts.size(); ++i) {
    // Alone, sequence i must use the same random stream: run it at index i of the call.
    std::vector<std::vector<int32_t>> one(i + 1, prompts[i]);
    auto single = generate(m, tok, one, opt)[i];
    EXPECT_EQ(batched[i].tokens, single.tokens) << "sequence " << i;
    ASSERT_EQ(batched[i].logprobs.size(), single.logprobs.size());
    for (size_t t = 0; t < single.logprobs.size(); ++t)
      EXPECT_NEAR(batched[i].logprobs[t], single.logprobs[t], 1e-4);
    EXPECT_EQ(batched[i].text, single.text);
  }
}

}  // namespace

TEST(Generator, BatchedGreedyEqualsOneAtATime) { expect_batch_equals_single({.temperature = 0.0f}); }
TEST(Generator, BatchedSamplingEqualsOneAtATime) { expect_batch_equals_single({.temperature = 0.9f, .top_k = 20}); }

TEST(Generator, LogprobsMatchAFullForward) {
  auto m = random_model();
  IdTokenizer tok;
  GenerateOptions opt;
  opt.max_new_tokens = 10;
  opt.sampling.temperature = 0.7f;
  opt.stop_at_eos = false;
  std::vector<int32_t> prompt{1, 4, 9};
  auto r = generate(m, tok, {prompt}, opt)[0];
  ASSERT_EQ(r.tokens.size(), 10u);
  std::vector<int64_t> all(prompt.begin(), prompt.end());
  all.insert(all.end(), r.tokens.begin(), r.tokens.end());
  torch::NoGradGuard g;
  auto logp = torch::log_softmax(m->forward(torch::tensor(all).unsqueeze(0))[0] / 0.7, -1);  // (T, V)
  for (size_t t = 0; t < r.tokens.size(); ++t)
    EXPECT_NEAR(r.logprobs[t], logp[prompt.size() - 1 + t][r.tokens[t]].item<float>(), 1e-4);
}

TEST(Generator, StopsAtEosAndStopStrings) {
  auto m = random_model();
  IdTokenizer tok;
  GenerateOptions opt;
  opt.max_new_tokens = 30;
  opt.sampling.temperature = 0.0f;
  opt.stop_at_eos = false;
  auto free_run = generate(m, tok, {{1, 3}}, opt)[0];
  ASSERT_EQ(free_run.finish_reason, "length");
  // Make the 4th generated token the EOS: generation must end right there.
  opt.stop_at_eos = true;
  opt.eos_ids = {free_run.tokens[3]};
  auto r = generate(m, tok, {{1, 3}}, opt)[0];
  auto first = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[3]) - free_run.tokens.begin();
  EXPECT_EQ(r.finish_reason, "eos");
  EXPECT_EQ(r.tokens.size(), static_cast<size_t>(first + 1));
  // A stop string made of the 3rd token's text: text is cut before it.
  opt.eos_ids = {};
  opt.stop_at_eos = false;
  opt.stop_strings = {tok.token_bytes(free_run.tokens[2])};
  auto s = generate(m, tok, {{1, 3}}, opt)[0];
  EXPECT_EQ(s.finish_reason, "stop");
  EXPECT_EQ(s.text.find(opt.stop_strings[0]), std::string::npos);
  EXPECT_LE(s.tokens.size(), 3u);
}

// "" is in every text: as a stop string it would end every sequence after one token.
TEST(Generator, RejectsAnEmptyStopString) {
  auto m = random_model();
  IdTokenizer tok;
  GenerateOptions opt;
  opt.max_new_tokens = 8;
  opt.stop_strings = {"<7>", ""};
  try {
    generate(m, tok, {{1, 3}}, opt);
    ADD_FAILURE() << "no Error for an empty stop string";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stop string must not be empty"), std::string::npos) << e.what();
  }
}

TEST(Generator, RejectsOutOfVocabularyPrompt) {
  auto m = random_model();
  IdTokenizer tok;
  EXPECT_ANY_THROW(generate(m, tok, {{1, 500}}, GenerateOptions{}));
  EXPECT_ANY_THROW(generate(m, tok, {{}}, GenerateOptions{}));
}
