// Transformer invariants on small random models of both families: cached decoding equals a
// full forward, and a left-padded batch equals its sequences run one at a time.
#include <gtest/gtest.h>

#include "model/transformer.h"
#include "trainers/trainer_util.h"

using namespace rlhf;

namespace {

ModelConfig tiny_llama() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 97; c.hidden_size = 32; c.num_layers = 2; c.num_heads = 4; c.num_kv_heads = 2;
  c.head_dim = 8; c.intermediate_size = 48; c.max_position_embeddings = 64;
  return c;
}

ModelConfig tiny_gpt2() {
  ModelConfig c = tiny_llama();
  c.architecture = "GPT2LMHeadModel";
  c.num_kv_heads = 4; c.norm = NormType::LayerNorm; c.mlp = MlpType::GELU;
  c.positions = PositionType::Learned; c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
  c.tie_word_embeddings = true;
  return c;
}

Transformer random_model(const ModelConfig& cfg) {
  torch::manual_seed(7);
  Transformer m(cfg);
  torch::NoGradGuard g;
  for (auto& p : m->parameters()) p.normal_(0, 0.3);
  m->eval();
  return m;
}

class TransformerBoth : public ::testing::TestWithParam<ModelConfig> {};

}  // namespace

TEST_P(TransformerBoth, CachedDecodingEqualsFullForward) {
  auto m = random_model(GetParam());
  torch::NoGradGuard g;
  auto tokens = torch::randint(0, 97, {3, 12}, torch::kLong);
  auto full = m->forward(tokens);  // (3, 12, V)
  auto cache = KVCache::allocate(m->config(), 3, 16, torch::kFloat32);
  auto first = m->forward(tokens.narrow(1, 0, 7), {}, {}, &cache);
  std::vector<torch::Tensor> parts{first};
  for (int t = 7; t < 12; ++t) parts.push_back(m->forward(tokens.narrow(1, t, 1), {}, {}, &cache));
  auto cached = torch::cat(parts, 1);
  EXPECT_EQ(cache.length, 12);
  EXPECT_TRUE(torch::allclose(full, cached, 1e-5, 1e-5)) << (full - cached).abs().max().item<float>();
}

// Prefill runs the whole prompt in one call (batched over positions, our attention kernel);
// feeding the same tokens one at a time through the cache must give the same logits.
TEST_P(TransformerBoth, PrefillEqualsTokenByToken) {
  auto m = random_model(GetParam());
  torch::NoGradGuard g;
  auto tokens = torch::randint(0, 97, {2, 20}, torch::kLong);
  auto cache = KVCache::allocate(m->config(), 2, 24, torch::kFloat32);
  auto prefill = m->forward(tokens, {}, {}, &cache);  // (2, 20, V)
  auto step_cache = KVCache::allocate(m->config(), 2, 24, torch::kFloat32);
  std::vector<torch::Tensor> steps;
  for (int t = 0; t < 20; ++t) steps.push_back(m->forward(tokens.narrow(1, t, 1), {}, {}, &step_cache));
  auto stepped = torch::cat(steps, 1);
  EXPECT_TRUE(torch::allclose(prefill, stepped, 1e-5, 1e-5)) << (prefill - stepped).abs().max().item<float>();
  // The caches filled both ways agree too: the next token decodes the same from either.
  auto next = torch::randint(0, 97, {2, 1}, torch::kLong);
  EXPECT_TRUE(torch::allclose(m->forward(next, {}, {}, &cache), m->forward(next, {}, {}, &step_cache), 1e-5, 1e-5));
}

TEST_P(TransformerBoth, LeftPaddedBatchEqualsOneAtATime) {
  auto m = random_model(GetParam());
  torch::NoGradGuard g;
  std::vector<std::vector<int64_t>> seqs{{5, 9, 13, 2, 44, 1}, {7, 8}, {60, 61, 62, 63}};
  const int64_t T = 6;
  auto tokens = torch::zeros({3, T}, torch::kLong);
  auto mask = torch::zeros({3, T}, torch::kLong);
  for (int b = 0; b < 3; ++b) {
    int64_t n = seqs[b].size();
    for (int64_t i = 0; i < n; ++i) tokens[b][T - n + i] = seqs[b][i];
    mask[b].narrow(0, T - n, n).fill_(1);
  }
  auto batched = m->forward(tokens, positions_from_mask(mask), mask);
  for (int b = 0; b < 3; ++b) {
    int64_t n = seqs[b].size();
    auto one = m->forward(torch::tensor(seqs[b]).unsqueeze(0));  // (1, n, V)
    auto part = batched[b].narrow(0, T - n, n).unsqueeze(0);
    EXPECT_TRUE(torch::allclose(one, part, 1e-5, 1e-5)) << "row " << b;
  }
}

TEST_P(TransformerBoth, ParameterNamesAreCanonical) {
  Transformer m(GetParam());
  auto w = m->weights();
  EXPECT_TRUE(w.count("model.embed_tokens.weight"));
  EXPECT_TRUE(w.count("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_TRUE(w.count("model.layers.0.post_attention_layernorm.weight"));
  EXPECT_EQ(w.count("lm_head.weight"), GetParam().tie_word_embeddings ? 0u : 1u);
  EXPECT_EQ(w.count("model.embed_positions.weight"), GetParam().positions == PositionType::Learned ? 1u : 0u);
  EXPECT_EQ(w.at("model.layers.0.self_attn.k_proj.weight").size(0), GetParam().num_kv_heads * GetParam().head_dim);
}

TEST_P(TransformerBoth, LoadWeightsRejectsWrongShapeAndUnknownTensor) {
  Transformer a(GetParam()), b(GetParam());
  auto w = a->weights();
  b->load_weights(w, "x.safetensors");
  auto bad = w;
  bad["model.norm.weight"] = torch::ones({5});
  try {
    b->load_weights(bad, "x.safetensors");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight has shape [5]"), std::string::npos) << e.what();
  }
  auto extra = w;
  extra["model.layers.9.mlp.up_proj.weight"] = torch::ones({1});
  EXPECT_THROW(b->load_weights(extra, "x.safetensors"), std::exception);
}

INSTANTIATE_TEST_SUITE_P(Families, TransformerBoth, ::testing::Values(tiny_llama(), tiny_gpt2()),
                         [](const auto& info) { return info.param.architecture.substr(0, 4); });

TEST(WeightsFingerprint, ChangesWithOneBitAndNotOtherwise) {
  Transformer a(tiny_llama());
  const uint64_t f = weights_fingerprint(*a);
  EXPECT_EQ(weights_fingerprint(*a), f);
  torch::NoGradGuard g;
  auto w = a->weights().at("model.norm.weight");
  auto bits = w.view(torch::kInt32);
  bits[3] = bits[3].item<int32_t>() ^ 1;  // flip the lowest mantissa bit of one weight
  EXPECT_NE(weights_fingerprint(*a), f);
}
