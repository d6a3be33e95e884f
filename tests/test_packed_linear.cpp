// Packed weights (kernels/packed_linear.h): the kernels against dequantize() + torch's matmul
// (the same math, so tight tolerances), Q8_0 against a hand computation and llama.cpp's
// layout as the GGUF reader reads it, and a packed model against the float model holding
// the same (dequantized) values: logits, greedy generation, and refusing to train or save.
#include <c10/util/Half.h>

#include <cstring>

#include "core/error.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/layouts.h"
#include "generate/generator.h"
#include "gguf_builder.h"
#include "kernels/packed_linear.h"
#include "model/model.h"
#include "test_util.h"

namespace rlhf {
namespace {

namespace fs = std::filesystem;

const std::vector<WeightFormat> kFormats = {WeightFormat::F32, WeightFormat::BF16, WeightFormat::Q8_0};

// Runs the body with the CPU's kernels (AVX-512 here) and again with the portable ones.
template <typename F>
void with_each_kernel(F body) {
  for (bool portable : {false, true}) {
    SCOPED_TRACE(portable ? "portable kernels" : "the CPU's kernels");
    packed_kernels_force_portable(portable);
    body();
  }
  packed_kernels_force_portable(false);
}

TEST(PackedLinear, MatchesDequantizedMatmul) {
  torch::manual_seed(0);
  // K = 96 and 200: not multiples of 64; K = 40: not even a whole Q8_0 block; N odd; 301
  // rows of 200 make two panels.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{37, 96}, {17, 40}, {301, 200}};
  with_each_kernel([&] {
    for (auto fmt : kFormats)
      for (auto [N, K] : shapes)
        for (int64_t B : {1, 3, 17, 64}) {
          SCOPED_TRACE(std::string(weight_format_name(fmt)) + " N=" + std::to_string(N) + " K=" +
                       std::to_string(K) + " B=" + std::to_string(B));
          auto w = torch::randn({N, K}), bias = torch::randn({N}), x = torch::randn({B, K});
          const PackedWeight p = pack(w, fmt);
          const auto ref = torch::matmul(x, dequantize(p).t()) + bias;
          const auto y = packed_linear(x, p, bias);
          ASSERT_EQ(y.sizes(), ref.sizes());
          EXPECT_TRUE(torch::allclose(y, ref, 1e-5, 1e-4)) << (y - ref).abs().max().item<float>();
        }
  });
}

// 5 to 64 rows run the register-blocked kernel (4 weight rows by up to 6 rows of x): rows
// that split unevenly into chunks (7 = 4 + 3, 17 = 6 + 6 + 5), N not a multiple of 4, K with
// a tail past the last 16 columns (35, 579) and K in several chunks (2100).
TEST(PackedLinear, BlockedRowsMatchDequantizedMatmul) {
  torch::manual_seed(3);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{13, 35}, {38, 579}, {9, 2100}, {64, 64}};
  with_each_kernel([&] {
    for (auto fmt : kFormats)
      for (auto [N, K] : shapes)
        for (int64_t M : {5, 6, 7, 16, 17, 64}) {
          SCOPED_TRACE(std::string(weight_format_name(fmt)) + " N=" + std::to_string(N) + " K=" +
                       std::to_string(K) + " M=" + std::to_string(M));
          auto w = torch::randn({N, K}) * 0.1, x = torch::randn({M, K});
          const PackedWeight p = pack(w, fmt);
          const auto ref = torch::matmul(x.to(torch::kDouble), dequantize(p).t().to(torch::kDouble)).to(torch::kFloat);
          const auto y = packed_linear(x, p);
          ASSERT_EQ(y.sizes(), ref.sizes());
          EXPECT_TRUE(torch::allclose(y, ref, 1e-5, 1e-5)) << (y - ref).abs().max().item<float>();
        }
  });
}

TEST(PackedLinear, KeepsLeadingDimsAndReadsStridedInput) {
  torch::manual_seed(1);
  const PackedWeight p = pack(torch::randn({33, 64}), WeightFormat::Q8_0);
  auto x = torch::randn({64, 2, 3}).permute({1, 2, 0});  // (2, 3, 64), not contiguous
  auto y = packed_linear(x, p);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 33}));
  EXPECT_TRUE(torch::allclose(y, torch::matmul(x, dequantize(p).t()), 1e-5, 1e-4));
}

TEST(PackedLinear, DequantizeMatchesTheStoredValues) {
  torch::manual_seed(2);
  auto w = torch::randn({9, 70});
  EXPECT_TRUE(torch::equal(dequantize(pack(w, WeightFormat::F32)), w));
  EXPECT_TRUE(torch::equal(dequantize(pack(w, WeightFormat::BF16)), w.to(torch::kBFloat16).to(torch::kFloat32)));
  // Q8_0 keeps each value within half a step of its block's scale d = max|w| / 127, plus
  // |q| <= 127 times the fp16 rounding of d (2^-11 d): 0.562 d.
  auto q = dequantize(pack(w, WeightFormat::Q8_0));
  auto blocks = torch::constant_pad_nd(w, {0, 26}).view({9, 3, 32});
  auto step = blocks.abs().amax(-1, true) / 127;
  auto err = torch::constant_pad_nd(q - w, {0, 26}).view({9, 3, 32}).abs();
  EXPECT_TRUE((err <= step * 0.57).all().item<bool>());
  // Embedding rows: the same values, picked by index.
  const PackedWeight p = pack(w, WeightFormat::Q8_0);
  auto idx = torch::tensor({{3, 0}, {8, 3}}, torch::kLong);
  EXPECT_TRUE(torch::equal(dequantize_rows(p, idx), q.index_select(0, idx.flatten()).view({2, 2, 70})));
}

// One block by hand: scale 0.25 (max |w| = 31.75 = 127 * 0.25), halves rounded away from zero.
TEST(PackedLinear, Q8_0BlockByHand) {
  std::vector<float> v(32, 0.0f);
  v[0] = -31.75f;  // q = -127
  v[1] = 0.625f;   // 2.5 steps: q = 3
  v[2] = -0.625f;  // q = -3
  v[3] = 1.0f;     // q = 4
  v[31] = 0.1f;    // 0.4 steps: q = 0
  auto w = torch::tensor(v).view({1, 32});
  const PackedWeight p = pack(w, WeightFormat::Q8_0);
  ASSERT_EQ(p.data.sizes(), (std::vector<int64_t>{1, 34}));
  const uint8_t* b = p.data.data_ptr<uint8_t>();
  uint16_t d_bits;
  std::memcpy(&d_bits, b, 2);
  EXPECT_EQ(d_bits, c10::Half(0.25f).x);
  const auto* q = reinterpret_cast<const int8_t*>(b + 2);
  EXPECT_EQ(q[0], -127);
  EXPECT_EQ(q[1], 3);
  EXPECT_EQ(q[2], -3);
  EXPECT_EQ(q[3], 4);
  EXPECT_EQ(q[31], 0);
  EXPECT_EQ(dequantize(p)[0][1].item<float>(), 0.75f);
  // A row of 40 values takes two blocks, the second padded with zero quants.
  const PackedWeight r = pack(torch::ones({1, 40}), WeightFormat::Q8_0);
  ASSERT_EQ(r.data.size(1), 2 * kQ8_0BlockBytes);
  for (int64_t k = 8; k < 32; ++k) EXPECT_EQ(r.data[0][34 + 2 + k].item<uint8_t>(), 0) << k;
}

// A one-layer llama (C = 64, H = 4, H_kv = 2, D = 16, I = 96, V = 32) with every matrix in
// Q8_0 blocks made by pack(), the norms in F32. `w` gets the float values the blocks hold, by
// GGUF name.
test::GgufBuilder q8_llama_gguf(std::map<std::string, torch::Tensor>& w, std::map<std::string, PackedWeight>& blocks) {
  test::GgufBuilder g;
  g.str("general.architecture", "llama");
  g.u32("llama.embedding_length", 64);
  g.u32("llama.block_count", 1);
  g.u32("llama.feed_forward_length", 96);
  g.u32("llama.attention.head_count", 4);
  g.u32("llama.attention.head_count_kv", 2);
  g.u32("llama.context_length", 64);
  g.f32("llama.rope.freq_base", 10000.0f);
  g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  torch::manual_seed(5);
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const PackedWeight p = pack(torch::randn({rows, cols}) * 0.2, WeightFormat::Q8_0);
    blocks[name] = p;
    w[name] = dequantize(p);
    g.tensors.push_back({name, {uint64_t(cols), uint64_t(rows)}, 8,
                         std::string(reinterpret_cast<const char*>(p.data.data_ptr()), p.data.nbytes())});
  };
  auto norm = [&](const std::string& name, int64_t n) {
    w[name] = 1 + 0.1 * torch::randn({n});
    g.f32_tensor(name, {uint64_t(n)}, w[name]);
  };
  matrix("token_embd.weight", 32, 64);
  matrix("output.weight", 32, 64);
  norm("output_norm.weight", 64);
  norm("blk.0.attn_norm.weight", 64);
  norm("blk.0.ffn_norm.weight", 64);
  matrix("blk.0.attn_q.weight", 64, 64);
  matrix("blk.0.attn_k.weight", 32, 64);
  matrix("blk.0.attn_v.weight", 32, 64);
  matrix("blk.0.attn_output.weight", 64, 64);
  matrix("blk.0.ffn_gate.weight", 96, 64);
  matrix("blk.0.ffn_up.weight", 96, 64);
  matrix("blk.0.ffn_down.weight", 64, 96);
  return g;
}

TEST(PackedGguf, Q8_0BlocksAreKeptAsStored) {
  test::TempDir dir;
  std::map<std::string, torch::Tensor> w;
  std::map<std::string, PackedWeight> blocks;
  write_file_atomic(dir / "q8.gguf", q8_llama_gguf(w, blocks).build());
  // The reader's own dequantization sees in our blocks what dequantize() sees.
  const ModelFiles floats = read_gguf(dir / "q8.gguf");
  EXPECT_TRUE(floats.packed.empty());
  EXPECT_TRUE(torch::equal(floats.weights.at("model.layers.0.mlp.down_proj.weight"), w["blk.0.ffn_down.weight"]));
  EXPECT_TRUE(torch::equal(floats.weights.at("lm_head.weight"), w["output.weight"]));
  // Kept: the blocks as written (q and k rows permuted to HF's rotary layout), no float copy.
  const ModelFiles kept = read_gguf(dir / "q8.gguf", /*keep_stored=*/true);
  EXPECT_FALSE(kept.weights.contains("model.layers.0.mlp.down_proj.weight"));
  const PackedWeight& down = kept.packed.at("model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(down.format, WeightFormat::Q8_0);
  EXPECT_EQ(down.cols, 96);
  EXPECT_TRUE(torch::equal(down.data, blocks["blk.0.ffn_down.weight"].data));
  const PackedWeight& q = kept.packed.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_TRUE(torch::equal(q.data, rotary_interleaved_to_half(blocks["blk.0.attn_q.weight"].data, 4)));
  for (const auto& [name, t] : floats.weights) {
    if (t.dim() == 2) {
      EXPECT_TRUE(torch::equal(dequantize(kept.packed.at(name)), t)) << name;
    }
  }
  EXPECT_EQ(kept.config.hidden_size, floats.config.hidden_size);
  EXPECT_FALSE(kept.config.tie_word_embeddings);
}

torch::Tensor batch_tokens(int64_t vocab) {
  torch::manual_seed(6);
  return torch::randint(0, vocab, {3, 11}, torch::kLong);
}

TEST(PackedModel, Q8_0GgufLoadsPackedAndMatchesTheFloatModel) {
  test::TempDir dir;
  std::map<std::string, torch::Tensor> w;
  std::map<std::string, PackedWeight> blocks;
  write_file_atomic(dir / "q8.gguf", q8_llama_gguf(w, blocks).build());
  torch::NoGradGuard no_grad;
  auto packed = load_model(dir / "q8.gguf", {.weights = "auto"});
  auto floats = load_model(dir / "q8.gguf", {.weights = "f32"});
  EXPECT_EQ(packed.model->matrix_format(), WeightFormat::Q8_0);
  EXPECT_FALSE(floats.model->is_packed());
  // One layer: q, k, v, o, gate, up, down, the LM head; the embedding is not read per step.
  int64_t expected = 0;
  for (const auto& [name, p] : blocks)
    if (name != "token_embd.weight") expected += p.bytes();
  EXPECT_EQ(packed.model->matrix_bytes(), expected);
  const auto tokens = batch_tokens(32);
  auto a = packed.model->forward(tokens), b = floats.model->forward(tokens);
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
}

// A one-layer GPT-2 as llama.cpp writes it (fused attn_qkv, biases, learned positions), every
// matrix in Q8_0 (the positions too), vectors in F32.
test::GgufBuilder q8_gpt2_gguf() {
  test::GgufBuilder g;
  g.str("general.architecture", "gpt2");
  g.u32("gpt2.embedding_length", 64);
  g.u32("gpt2.block_count", 1);
  g.u32("gpt2.feed_forward_length", 128);
  g.u32("gpt2.attention.head_count", 4);
  g.u32("gpt2.context_length", 32);
  g.f32("gpt2.attention.layer_norm_epsilon", 1e-5f);
  torch::manual_seed(8);
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
    const PackedWeight p = pack(torch::randn({rows, cols}) * 0.2, WeightFormat::Q8_0);
    g.tensors.push_back({name, {uint64_t(cols), uint64_t(rows)}, 8,
                         std::string(reinterpret_cast<const char*>(p.data.data_ptr()), p.data.nbytes())});
  };
  auto vec = [&](const std::string& name, int64_t n, double mean) {
    g.f32_tensor(name, {uint64_t(n)}, mean + 0.1 * torch::randn({n}));
  };
  matrix("token_embd.weight", 40, 64);
  matrix("position_embd.weight", 32, 64);
  vec("output_norm.weight", 64, 1);
  vec("output_norm.bias", 64, 0);
  for (const char* n : {"attn_norm", "ffn_norm"}) {
    vec(std::string("blk.0.") + n + ".weight", 64, 1);
    vec(std::string("blk.0.") + n + ".bias", 64, 0);
  }
  matrix("blk.0.attn_qkv.weight", 192, 64);
  vec("blk.0.attn_qkv.bias", 192, 0);
  matrix("blk.0.attn_output.weight", 64, 64);
  vec("blk.0.attn_output.bias", 64, 0);
  matrix("blk.0.ffn_up.weight", 128, 64);
  vec("blk.0.ffn_up.bias", 128, 0);
  matrix("blk.0.ffn_down.weight", 64, 128);
  vec("blk.0.ffn_down.bias", 64, 0);
  return g;
}

TEST(PackedModel, Gpt2Q8_0GgufLoadsPacked) {
  test::TempDir dir;
  write_file_atomic(dir / "gpt2.gguf", q8_gpt2_gguf().build());
  torch::NoGradGuard no_grad;
  auto packed = load_model(dir / "gpt2.gguf", {.weights = "auto"});
  auto floats = load_model(dir / "gpt2.gguf", {.weights = "f32"});
  EXPECT_EQ(packed.model->matrix_format(), WeightFormat::Q8_0);
  const auto tokens = batch_tokens(40);
  auto a = packed.model->forward(tokens), b = floats.model->forward(tokens);
  EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
}

fs::path stories() { return test::data_dir() / "stories260K" / "stories260K.gguf"; }

// stories260K (F32 in the file; its MLP width 172 is no multiple of 32) quantized at load.
TEST(PackedModel, QuantizedAtLoadMatchesItsDequantizedSelf) {
  for (const char* format : {"q8_0", "bf16"}) {
    SCOPED_TRACE(format);
    auto packed = load_model(stories(), {.weights = format});
    auto floats = load_model(stories(), {.weights = format});
    floats.model->unpack();  // the float model of the very same values
    EXPECT_EQ(packed.model->matrix_format(), parse_weight_format(format));
    EXPECT_FALSE(floats.model->is_packed());
    EXPECT_LT(packed.model->matrix_bytes(), floats.model->matrix_bytes() * 0.6);
    {
      torch::NoGradGuard no_grad;
      const auto tokens = batch_tokens(512);
      auto a = packed.model->forward(tokens), b = floats.model->forward(tokens);
      EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-4)) << (a - b).abs().max().item<float>();
    }
    // Greedy generation, one row and a batch of four (GEMV and panels), token for token.
    GenerateOptions opt;
    opt.max_new_tokens = 40;
    opt.sampling.temperature = 0;
    opt.stop_at_eos = false;
    const auto prompt = packed.tokenizer->encode("Once upon a time", {.add_bos = true});
    for (size_t n : {1, 5}) {
      std::vector<std::vector<int32_t>> prompts(n, prompt);
      auto ga = generate(packed.model, *packed.tokenizer, prompts, opt);
      auto gb = generate(floats.model, *floats.tokenizer, prompts, opt);
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(ga[i].tokens, gb[i].tokens) << "row " << i;
    }
  }
}

// Float32 weights: 2 to kPackedLinearOwnRows rows at inference run our kernels
// (transformer.cpp), the rest ATen's. stories260K's MLP width 172 leaves a K tail in down_proj.
TEST(PackedModel, FloatDecodeRowsMatchAten) {
  auto lm = load_model(stories());
  torch::manual_seed(7);
  for (int64_t rows : {3, 16, 64}) {  // GEMV, the blocked kernel at 6 + 5 + 5 and 11 chunks
    SCOPED_TRACE(rows);
    const auto tokens = torch::randint(0, 512, {rows, 1}, torch::kLong);  // rows through each projection
    torch::Tensor ours;
    {
      torch::NoGradGuard no_grad;
      ours = lm.model->forward(tokens);
    }
    const auto aten = lm.model->forward(tokens).detach();  // autograd on: ATen's linear
    EXPECT_TRUE(torch::allclose(ours, aten, 1e-5, 1e-5)) << (ours - aten).abs().max().item<float>();
  }
}

// Greedy decoding of 16 different prompts on float32 weights: each step's 16 rows through our
// blocked kernel, against the same with the portable switch on (which hands those rows to
// torch::matmul, MKL's sgemm, as RLHF_GEMV=mkl does), token for token and log-prob for log-prob.
TEST(PackedModel, FloatBatchedGreedyMatchesSgemm) {
  auto lm = load_model(stories());
  const char* starts[] = {"Once upon a time", "The cat", "Lily wanted", "One day, a big", "Tom and Sue",
                          "The sun was", "A little bird", "There was a girl", "Mom said", "The dog ran",
                          "Ben had a red", "In the park", "Sam", "The old man saw", "It was a cold", "Anna liked"};
  std::vector<std::vector<int32_t>> prompts;
  for (const char* s : starts) prompts.push_back(lm.tokenizer->encode(s, {.add_bos = true}));
  GenerateOptions opt;
  opt.max_new_tokens = 24;
  opt.sampling.temperature = 0;
  opt.stop_at_eos = false;
  packed_kernels_force_portable(true);
  const auto sgemm = generate(lm.model, *lm.tokenizer, prompts, opt);
  packed_kernels_force_portable(false);
  const auto ours = generate(lm.model, *lm.tokenizer, prompts, opt);
  ASSERT_EQ(ours.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(ours[i].tokens, sgemm[i].tokens) << "row " << i;
    ASSERT_EQ(ours[i].logprobs.size(), sgemm[i].logprobs.size());
    for (size_t t = 0; t < ours[i].logprobs.size(); ++t)
      EXPECT_NEAR(ours[i].logprobs[t], sgemm[i].logprobs[t], 1e-4) << "row " << i << " token " << t;
  }
}

TEST(PackedModel, RefusesToTrainOrSave) {
  auto lm = load_model(stories(), {.weights = "q8_0"});
  const auto tokens = batch_tokens(512);
  lm.model->train();
  auto expect_packed_error = [](auto f) {
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("packed (q8_0)"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--weights f32"), std::string::npos) << e.what();
    }
  };
  expect_packed_error([&] { lm.model->forward(tokens).sum().backward(); });
  expect_packed_error([&] { lm.model->weights(); });
  test::TempDir dir;
  expect_packed_error([&] { write_hf_dir(dir / "out", lm.config, lm.model->weights(), lm.tokenizer.get()); });
  // Dequantized explicitly, it trains and saves.
  lm.model->unpack();
  lm.model->forward(tokens).sum().backward();
  EXPECT_NO_THROW(write_hf_dir(dir / "out", lm.config, lm.model->weights(), lm.tokenizer.get()));
}

TEST(PackedModel, RefusesFormatsItCannotRun) {
  try {
    load_model(stories(), {.dtype = "bfloat16", .weights = "q8_0"});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--dtype float32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_model(stories(), {.weights = "q4"}), Error);
  // auto keeps a float file float (trainable as before).
  EXPECT_FALSE(load_model(stories(), {.weights = "auto"}).model->is_packed());
}

TEST(PackedCli, GenerateTakesWeights) {
  const std::string base = "generate --model " + stories().string() + " --prompt 'Once upon' --max-new-tokens 12 -t 0";
  auto q8 = test::run_cli(base + " --weights q8_0", "", /*with_stderr=*/false);
  auto f32 = test::run_cli(base + " --weights f32", "", false);
  ASSERT_EQ(q8.exit_code, 0) << q8.output;
  ASSERT_EQ(f32.exit_code, 0) << f32.output;
  EXPECT_NE(q8.output.find("Once upon"), std::string::npos) << q8.output;
  auto bad = test::run_cli(base + " --weights q4");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("unknown weight format 'q4'"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace rlhf
