// GGUF export (formats/gguf_writer.h): what we write, our reader reads back to the same
// model: config, tokenizer and weights (exactly in F32, within the type's rounding otherwise,
// and Q8_0 blocks equal to pack()'s), so the logits match. tests/python/test_gguf_export.py
// reads the same files with llama.cpp's gguf package.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/gguf_writer.h"
#include "kernels/packed_linear.h"
#include "model/model.h"
#include "test_util.h"

using namespace rlhf;
namespace fs = std::filesystem;

namespace {

fs::path stories() { return test::data_dir() / "stories260K" / "stories260K.gguf"; }

const std::vector<std::string> kTexts = {"Once upon a time, there was a little girl named Lily.",
                                         "  Two  spaces, tabs\tand\nnew lines; numbers 12345 and caf\xC3\xA9!", ""};

void expect_same_tokenizer(const Tokenizer& a, const Tokenizer& b) {
  ASSERT_EQ(a.vocab_size(), b.vocab_size());
  for (int32_t i = 0; i < a.vocab_size(); ++i) {
    ASSERT_EQ(a.token_text(i), b.token_text(i)) << i;
    ASSERT_EQ(a.is_special(i), b.is_special(i)) << i;
  }
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  EXPECT_EQ(a.pad_id(), b.pad_id());
  EXPECT_EQ(a.add_bos_default(), b.add_bos_default());
  for (const auto& t : kTexts) EXPECT_EQ(a.encode(t), b.encode(t)) << t;
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_FLOAT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_FLOAT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.positions, b.positions);
}

// Each weight of `read` against `expected(name, original)`.
template <class F>
void expect_weights(const TensorMap& original, const TensorMap& read, F expected) {
  ASSERT_EQ(original.size(), read.size());
  for (const auto& [name, w] : original) {
    auto it = read.find(name);
    ASSERT_NE(it, read.end()) << name;
    const auto want = expected(name, w.to(torch::kFloat32));
    ASSERT_EQ(it->second.sizes(), want.sizes()) << name;
    EXPECT_TRUE(torch::equal(it->second.to(torch::kFloat32), want)) << name;
  }
}

}  // namespace

TEST(GgufWriter, StoriesRoundTripsExactlyInF32) {
  test::TempDir dir;
  const auto src = read_model_files(stories());
  write_gguf(dir / "out.gguf", src.config, src.weights, src.tokenizer.get(), GgufFileType::F32);
  const auto back = read_model_files(dir / "out.gguf");
  expect_same_config(src.config, back.config);
  expect_same_tokenizer(*src.tokenizer, *back.tokenizer);
  expect_weights(src.weights, back.weights, [](const std::string&, const torch::Tensor& w) { return w; });
}

TEST(GgufWriter, HalfTypesRoundOnceAndQ8_0KeepsPackBlocks) {
  test::TempDir dir;
  const auto src = read_model_files(stories());
  for (auto [type, dtype] : {std::pair{GgufFileType::F16, torch::kFloat16}, std::pair{GgufFileType::BF16, torch::kBFloat16}}) {
    write_gguf(dir / "half.gguf", src.config, src.weights, src.tokenizer.get(), type);
    // Matrices rounded to the type once; norms (1-D) stay exact.
    expect_weights(src.weights, read_model_files(dir / "half.gguf").weights, [dtype](const std::string&, const torch::Tensor& w) {
      return w.dim() == 2 ? w.to(dtype).to(torch::kFloat32) : w;
    });
  }
  write_gguf(dir / "q8.gguf", src.config, src.weights, src.tokenizer.get(), GgufFileType::Q8_0);
  const auto q8 = read_model_files(dir / "q8.gguf", {}, /*keep_stored=*/true);
  int64_t blocks = 0;
  for (const auto& [name, w] : src.weights) {
    if (w.dim() != 2) continue;
    if (w.size(1) % kQ8_0Block != 0) {  // stories' down projection: rows of 172, not whole blocks: F16, as llama.cpp
      ASSERT_TRUE(read_model_files(dir / "q8.gguf").weights.count(name)) << name;
      continue;
    }
    auto it = q8.packed.find(name);
    ASSERT_NE(it, q8.packed.end()) << name << " was not kept as Q8_0 blocks";
    EXPECT_TRUE(torch::equal(it->second.data, pack(w, WeightFormat::Q8_0).data)) << name;
    ++blocks;
  }
  EXPECT_GE(blocks, 2);
  // The file's model gives the logits of a float model holding the values the file should
  // hold: pack()'s blocks dequantized, F16 where rows are not whole blocks.
  torch::NoGradGuard no_grad;
  TensorMap expected;
  for (const auto& [name, w] : src.weights)
    expected[name] = w.dim() != 2                   ? w
                     : w.size(1) % kQ8_0Block == 0 ? dequantize(pack(w, WeightFormat::Q8_0))
                                                   : w.to(torch::kFloat16).to(torch::kFloat32);
  auto theirs = load_model(dir / "q8.gguf");
  auto ours = load_model(stories());
  ours.model->load_weights(expected, "expected");
  const auto tokens = torch::tensor({{1, 403, 407, 261, 378, 13, 429}}, torch::kLong);
  auto a = theirs.model->forward(tokens), b = ours.model->forward(tokens);
  EXPECT_LT((a - b).abs().max().item<float>(), 1e-5);
}

TEST(GgufWriter, Gpt2WithByteLevelTokenizerRoundTrips) {
  test::TempDir dir;
  ModelConfig c;
  c.architecture = "GPT2LMHeadModel";
  c.norm = NormType::LayerNorm;
  c.mlp = MlpType::GELU;
  c.positions = PositionType::Learned;
  c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
  c.vocab_size = 50257;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_heads = c.num_kv_heads = 4;
  c.head_dim = 8;
  c.intermediate_size = 128;
  c.max_position_embeddings = 64;
  c.tie_word_embeddings = true;
  c.bos_token_id = -1;
  c.eos_token_ids = {50256};
  torch::manual_seed(3);
  Transformer m(c);
  TensorMap weights;
  for (const auto& [name, w] : m->weights()) weights[name] = w.detach().clone();
  auto tok = load_tokenizer(test::data_dir() / "gpt2-bpe");
  write_gguf(dir / "gpt2.gguf", c, weights, tok.get(), GgufFileType::F32);
  const auto back = read_model_files(dir / "gpt2.gguf");
  EXPECT_EQ(back.config.architecture, "GPT2LMHeadModel");
  expect_same_config(c, back.config);
  expect_same_tokenizer(*tok, *back.tokenizer);
  expect_weights(weights, back.weights, [](const std::string&, const torch::Tensor& w) { return w; });
}

TEST(GgufWriter, RefusesWhatItCannotWriteAndKeepsTheOldFile) {
  test::TempDir dir;
  const auto src = read_model_files(stories());
  write_file_atomic(dir / "keep.gguf", std::string("earlier contents"));
  auto error_of = [&](auto f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error_of([&] { write_gguf(dir / "keep.gguf", src.config, src.weights, nullptr, GgufFileType::F32); })
                .find("has none"),
            std::string::npos);
  auto rm = src.config;
  rm.num_labels = 1;
  EXPECT_NE(error_of([&] { write_gguf(dir / "keep.gguf", rm, src.weights, src.tokenizer.get(), GgufFileType::F32); })
                .find("reward model"),
            std::string::npos);
  auto missing = src.weights;
  missing.erase("model.norm.weight");
  EXPECT_NE(error_of([&] { write_gguf(dir / "keep.gguf", src.config, missing, src.tokenizer.get(), GgufFileType::F32); }),
            "");
  EXPECT_EQ(read_file(dir / "keep.gguf"), "earlier contents");
  EXPECT_NE(error_of([] { parse_gguf_file_type("q4_k"); }).find("expected f32, f16, bf16 or q8_0"), std::string::npos);
}

TEST(GgufWriter, CliConvertWritesGgufThatGeneratesAsTheSource) {
  test::TempDir dir;
  const auto out = dir / "s.gguf";
  const auto convert = test::run_cli("convert --in " + stories().string() + " --out " + out.string() + " --type q8_0");
  ASSERT_EQ(convert.exit_code, 0) << convert.output;
  auto tokens_of = [&](const fs::path& model, const std::string& weights) {
    const auto r = test::run_cli("generate --model " + model.string() + " --weights " + weights +
                                     " --prompt 'Once upon a time' --temperature 0 --max-new-tokens 16 --json",
                                 "", /*with_stderr=*/false);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output.substr(0, r.output.find('\n')))["tokens"];
  };
  // Same tokens as the source quantized at load (the logprobs differ in the last digits:
  // stories' down projection is F16 in the file, see above).
  const auto exported = tokens_of(out, "auto");
  EXPECT_EQ(exported.size(), 16u);
  EXPECT_EQ(exported, tokens_of(stories(), "q8_0"));
  const auto bad = test::run_cli("convert --in " + stories().string() + " --out " + (dir / "x.gguf").string() +
                                 " --type q4_k");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("q4_k"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(dir / "x.gguf"));
}
