// Model-file readers and writers: GGUF and llama2.c agree on stories260K, layouts and names
// translate both ways, safetensors and config.json round-trip, and every kind of broken
// file gives an Error naming the file and the problem. Tokenizer-dependent checks live in
// test_model_tokenizer_io.cpp.
#include <c10/util/Half.h>

#include <sys/resource.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <random>

#include "core/error.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/layouts.h"
#include "formats/safetensors.h"
#include "gguf_builder.h"
#include "test_util.h"

namespace rlhf {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::GgufBuilder;

fs::path stories() { return test::data_dir() / "stories260K"; }

// Runs `f`, which must throw rlhf::Error with every string of `parts` in its message.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no rlhf::Error thrown";
}

void expect_same_config(const ModelConfig& a, const ModelConfig& b, bool same_positions = true) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  if (same_positions) {
    EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  }
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.mlp, b.mlp);
  EXPECT_EQ(a.positions, b.positions);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.attention_out_bias, b.attention_out_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
}

void expect_same_weights(const TensorMap& a, const TensorMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_EQ(t.scalar_type(), b.at(name).scalar_type()) << name;
    EXPECT_TRUE(torch::equal(t, b.at(name))) << name;
  }
}

// Random weights of the right shapes for `cfg`.
TensorMap random_weights(const ModelConfig& cfg, torch::ScalarType dtype = torch::kFloat32) {
  torch::manual_seed(0);
  TensorMap w;
  for (const auto& [name, shape] : canonical_shapes(cfg)) w[name] = torch::randn(shape).to(dtype);
  return w;
}

ModelConfig tiny_config(const std::string& arch) {
  ModelConfig c;
  c.architecture = arch;
  c.vocab_size = 48;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = arch == "GPT2LMHeadModel" ? 4 : 2;
  c.head_dim = 8;
  c.intermediate_size = 40;
  c.max_position_embeddings = 64;
  c.rope_theta = 500000.0;
  c.norm_eps = 1e-6;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  c.pad_token_id = 0;
  if (arch == "GPT2LMHeadModel") {
    c.norm = NormType::LayerNorm;
    c.mlp = MlpType::GELU;
    c.positions = PositionType::Learned;
    c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
    c.tie_word_embeddings = true;
    c.norm_eps = 1e-5;
    c.rope_theta = 10000.0;  // unused by learned positions; what reading a GPT-2 config gives
  } else if (arch == "Qwen2ForCausalLM") {
    c.attention_bias = true;
    c.tie_word_embeddings = true;
  } else if (arch == "MistralForCausalLM") {
    c.sliding_window = 16;
  } else {
    c.attention_bias = c.attention_out_bias = true;
    c.mlp_bias = true;
  }
  c.validate("tiny");
  return c;
}

// ---------------------------------------------------------------- stories260K, two formats

TEST(Formats, GgufAndLlama2cGiveTheSameModel) {
  ModelFiles g = read_gguf(stories() / "stories260K.gguf");
  ModelFiles b = read_llama2c(stories() / "stories260K.bin");  // finds tok512.bin beside it
  const ModelConfig& c = g.config;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.norm_eps, 1e-5);  // the GGUF's float32 1e-5, read as the decimal it stands for
  EXPECT_TRUE(c.tie_word_embeddings);  // output.weight in the GGUF is a copy of token_embd
  EXPECT_EQ(c.num_parameters(), 260032);
  // The GGUF says context 2048, the llama2.c header seq_len 512; all else agrees.
  EXPECT_EQ(g.config.max_position_embeddings, 2048);
  EXPECT_EQ(b.config.max_position_embeddings, 512);
  expect_same_config(g.config, b.config, /*same_positions=*/false);
  expect_same_weights(g.weights, b.weights);
  ASSERT_TRUE(g.tokenizer && b.tokenizer);
  EXPECT_EQ(g.tokenizer->vocab_size(), 512);
  EXPECT_EQ(b.tokenizer->vocab_size(), 512);

  ModelFiles by_path = read_model_files(stories() / "stories260K.gguf");
  expect_same_weights(by_path.weights, g.weights);
}

// ---------------------------------------------------------------- layouts

// Meta pairs rows (2i, 2i+1) and rotates each pair by angle theta_i; HF pairs (i, i + D/2).
// Permuting the rows of W must turn one rotation into the other: perm(rope_meta(W x)) ==
// rope_hf(perm(W) x). This pins the direction of the permutation.
TEST(Layouts, RotaryPermutationMatchesTheTwoRopeConventions) {
  const int64_t H = 3, D = 8, C = 5;
  torch::manual_seed(1);
  torch::Tensor w = torch::randn({H * D, C}, torch::kFloat64), x = torch::randn({C}, torch::kFloat64);
  torch::Tensor theta = torch::rand({D / 2}, torch::kFloat64) * 3;
  auto rope_meta = [&](torch::Tensor q) {  // q: (H*D)
    auto p = q.view({H, D / 2, 2});
    auto a = p.select(2, 0), b = p.select(2, 1);
    return torch::stack({a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos()}, 2).reshape({H * D});
  };
  auto rope_hf = [&](torch::Tensor q) {
    auto p = q.view({H, 2, D / 2});
    auto a = p.select(1, 0), b = p.select(1, 1);
    return torch::stack({a * theta.cos() - b * theta.sin(), a * theta.sin() + b * theta.cos()}, 1).reshape({H * D});
  };
  torch::Tensor meta_q = rope_meta(torch::mv(w, x));
  torch::Tensor hf_q = rope_hf(torch::mv(rotary_interleaved_to_half(w, H), x));
  EXPECT_TRUE(torch::allclose(rotary_interleaved_to_half(meta_q.unsqueeze(1), H).squeeze(1), hf_q));
  // Row 2i+j of a Meta head is row j*D/2 + i of the HF head.
  torch::Tensor rows = torch::arange(H * D, torch::kFloat64);
  torch::Tensor hf_rows = rotary_interleaved_to_half(rows, H);
  EXPECT_EQ(hf_rows[1].item<double>(), 2.0);       // HF row 1 <- Meta row 2
  EXPECT_EQ(hf_rows[D / 2].item<double>(), 1.0);   // HF row D/2 <- Meta row 1
}

TEST(Layouts, RotaryPermutationsAreInverse) {
  torch::manual_seed(2);
  for (int64_t heads : {1, 2, 4}) {
    torch::Tensor w = torch::randn({heads * 16, 7}), b = torch::randn({heads * 16});
    EXPECT_FALSE(torch::equal(rotary_interleaved_to_half(w, heads), w));
    EXPECT_TRUE(torch::equal(rotary_half_to_interleaved(rotary_interleaved_to_half(w, heads), heads), w));
    EXPECT_TRUE(torch::equal(rotary_interleaved_to_half(rotary_half_to_interleaved(w, heads), heads), w));
    EXPECT_TRUE(torch::equal(rotary_half_to_interleaved(rotary_interleaved_to_half(b, heads), heads), b));
  }
  expect_error([] { rotary_interleaved_to_half(torch::zeros({10, 3}), 4); }, {"heads"});
}

TEST(Layouts, Gpt2NamesAndConv1dLayout) {
  ModelConfig cfg = tiny_config("GPT2LMHeadModel");
  TensorMap w = random_weights(cfg);
  TensorMap hf = canonical_to_gpt2(w);
  const int64_t C = cfg.hidden_size;
  // Conv1D stores (in, out): c_attn is (C, 3C) with q's rows as its first C columns.
  ASSERT_TRUE(hf.count("transformer.h.1.attn.c_attn.weight"));
  EXPECT_EQ(hf.at("transformer.h.1.attn.c_attn.weight").sizes(), (std::vector<int64_t>{C, 3 * C}));
  EXPECT_TRUE(torch::equal(hf.at("transformer.h.1.attn.c_attn.weight").narrow(1, C, C).t(),
                           w.at("model.layers.1.self_attn.k_proj.weight")));
  EXPECT_TRUE(torch::equal(hf.at("transformer.h.0.attn.c_attn.bias").narrow(0, 2 * C, C),
                           w.at("model.layers.0.self_attn.v_proj.bias")));
  EXPECT_TRUE(torch::equal(hf.at("transformer.h.0.mlp.c_fc.weight"), w.at("model.layers.0.mlp.up_proj.weight").t()));
  EXPECT_TRUE(hf.count("transformer.wte.weight") && hf.count("transformer.wpe.weight") &&
              hf.count("transformer.ln_f.bias"));
  EXPECT_FALSE(hf.count("lm_head.weight"));
  expect_same_weights(gpt2_to_canonical(hf), w);

  // Checkpoints without the "transformer." prefix, with the old mask buffers.
  TensorMap bare;
  for (const auto& [name, t] : hf) bare[name.substr(std::string("transformer.").size())] = t;
  bare["h.0.attn.bias"] = torch::ones({1, 1, 4, 4});
  bare["h.0.attn.masked_bias"] = torch::tensor(-1e4);
  expect_same_weights(gpt2_to_canonical(bare), w);
}

// ---------------------------------------------------------------- safetensors

TEST(Safetensors, RoundTripKeepsValuesAndDtypes) {
  test::TempDir dir;
  torch::manual_seed(3);
  TensorMap t = {
      {"f32", torch::randn({3, 5})},
      {"bf16", torch::randn({4, 2}).to(torch::kBFloat16)},
      {"f16", torch::randn({7}).to(torch::kFloat16)},
      {"f64", torch::randn({2, 2, 2}, torch::kFloat64)},
      {"i64", torch::arange(10)},
      {"i32", torch::arange(6, torch::kInt32).view({2, 3})},
      {"u8", torch::arange(5, torch::kUInt8)},
      {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(2.5f)},
      {"empty", torch::zeros({0, 4})},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input
  };
  write_safetensors(dir / "t.safetensors", t, {{"format", "pt"}, {"note", "hi"}});
  TensorMap back = read_safetensors(dir / "t.safetensors");
  expect_same_weights(back, t);
  // The header is padded so the data starts 8-byte aligned, and carries the metadata.
  std::string raw = read_file(dir / "t.safetensors");
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(json::parse(raw.substr(8, n))["__metadata__"]["note"], "hi");
}

TEST(Safetensors, CorruptFilesNameFileAndTensor) {
  test::TempDir dir;
  write_safetensors(dir / "ok.safetensors", {{"a", torch::ones({4, 4})}, {"b", torch::ones({8})}});
  std::string raw = read_file(dir / "ok.safetensors");

  std::string bad_len = raw;
  uint64_t huge = raw.size();  // header "length" reaching past the end
  std::memcpy(bad_len.data(), &huge, 8);
  write_file_atomic(dir / "len.safetensors", bad_len);
  expect_error([&] { read_safetensors(dir / "len.safetensors"); }, {"len.safetensors", "header length", "past the end"});

  json h = {{"a", {{"dtype", "F32"}, {"shape", {4, 4}}, {"data_offsets", {0, 64}}}},
            {"b", {{"dtype", "F32"}, {"shape", {8}}, {"data_offsets", {64, 1064}}}}};
  std::string hs = h.dump();
  uint64_t hn = hs.size();
  std::string past(8, '\0');
  std::memcpy(past.data(), &hn, 8);
  past += hs + std::string(96, '\0');
  write_file_atomic(dir / "off.safetensors", past);
  expect_error([&] { read_safetensors(dir / "off.safetensors"); }, {"off.safetensors", "'b'", "past the end"});

  write_file_atomic(dir / "trunc.safetensors", raw.substr(0, raw.size() - 1));
  expect_error([&] { read_safetensors(dir / "trunc.safetensors"); }, {"trunc.safetensors", "'b'", "truncated"});

  h["b"]["data_offsets"] = {64, 92};  // 28 bytes for 8 floats
  hs = h.dump();
  hn = hs.size();
  std::string size_mismatch(8, '\0');
  std::memcpy(size_mismatch.data(), &hn, 8);
  size_mismatch += hs + std::string(96, '\0');
  write_file_atomic(dir / "span.safetensors", size_mismatch);
  expect_error([&] { read_safetensors(dir / "span.safetensors"); }, {"span.safetensors", "'b'", "needs 32"});

  write_file_atomic(dir / "tiny.safetensors", std::string("abc"));
  expect_error([&] { read_safetensors(dir / "tiny.safetensors"); }, {"tiny.safetensors", "truncated"});

  // Two entries on the same bytes (or partly the same): a small file must not expand.
  for (const json& b_at : {json{0, 64}, json{32, 96}}) {
    json alias = {{"a", {{"dtype", "F32"}, {"shape", {16}}, {"data_offsets", {0, 64}}}},
                  {"b", {{"dtype", "F32"}, {"shape", {16}}, {"data_offsets", b_at}}}};
    std::string as = alias.dump();
    uint64_t an = as.size();
    std::string aliased(8, '\0');
    std::memcpy(aliased.data(), &an, 8);
    aliased += as + std::string(96, '\0');
    write_file_atomic(dir / "alias.safetensors", aliased);
    expect_error([&] { read_safetensors(dir / "alias.safetensors"); }, {"alias.safetensors", "'b'", "overlaps", "'a'"});
  }
}

// A file that passes every check but asks for more memory than there is: a 4 GiB tensor in a
// sparse file (no disk used), read in a child process whose address space is capped below the
// mapping plus the copy. The failure must name the file, not be a bare std::bad_alloc.
TEST(Safetensors, OutOfMemoryNamesTheFile) {
  test::TempDir dir;
  const uint64_t n = uint64_t{1} << 30;  // float32 values: 4 GiB
  json h = {{"w", {{"dtype", "F32"}, {"shape", {n}}, {"data_offsets", {0, 4 * n}}}}};
  std::string hs = h.dump();
  const fs::path file = dir / "big.safetensors";
  {
    std::ofstream out(file, std::ios::binary);
    const uint64_t len = hs.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << hs;
  }
  fs::resize_file(file, 8 + hs.size() + 4 * n);
  auto vm_bytes = [] {  // the process's address space now
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("VmSize:", 0) == 0) return std::stoull(line.substr(7)) * 1024;
    return 0ull;
  };
  auto read_capped = [&] {  // in the child: exit 0 with the Error's message on stderr
    const rlim_t cap = vm_bytes() + 6 * n;  // room for the 4 GiB mapping, not for its copy too
    const rlimit lim{cap, cap};
    if (::setrlimit(RLIMIT_AS, &lim) != 0) std::_Exit(3);
    try {
      read_safetensors(file);
    } catch (const Error& e) {
      std::fprintf(stderr, "%s\n", e.what());
      std::_Exit(0);
    } catch (...) {
      std::_Exit(1);
    }
    std::_Exit(2);
  };
  EXPECT_EXIT(read_capped(), ::testing::ExitedWithCode(0), "big\\.safetensors: .*(allocate|out of memory)");
}

// ---------------------------------------------------------------- GGUF: hand-built files

// A one-layer llama (C=32, H=2, H_kv=1, D=16, I=32, V=8) with token_embd in Q8_0, ffn_up in
// F16 and ffn_gate in BF16, every other tensor F32. `raw` gets the values as stored.
GgufBuilder tiny_llama_gguf(TensorMap& raw, uint32_t block_count = 1) {
  GgufBuilder g;
  g.str("general.architecture", "llama");
  g.u32("llama.embedding_length", 32);
  g.u32("llama.block_count", block_count);
  g.u32("llama.feed_forward_length", 32);
  g.u32("llama.attention.head_count", 2);
  g.u32("llama.attention.head_count_kv", 1);
  g.u32("llama.context_length", 16);
  g.f32("llama.rope.freq_base", 10000.0f);
  g.f32("llama.attention.layer_norm_rms_epsilon", 1e-6f);
  torch::manual_seed(4);
  auto add = [&](const std::string& name, int64_t rows, int64_t cols) {
    torch::Tensor t = cols ? torch::randn({rows, cols}) : torch::randn({rows});
    raw[name] = t;
    g.f32_tensor(name, cols ? std::vector<uint64_t>{uint64_t(cols), uint64_t(rows)} : std::vector<uint64_t>{uint64_t(rows)}, t);
  };
  // token_embd (8, 32): 8 Q8_0 blocks, row r has scale (r+1)/4 and quants k - 16 + r.
  std::string q8;
  torch::Tensor embd = torch::empty({8, 32});
  for (int r = 0; r < 8; ++r) {
    const float d = (r + 1) / 4.0f;  // exact in fp16
    uint16_t bits = c10::Half(d).x;
    GgufBuilder::put(q8, bits);
    for (int k = 0; k < 32; ++k) {
      GgufBuilder::put<int8_t>(q8, static_cast<int8_t>(k - 16 + r));
      embd[r][k] = d * (k - 16 + r);
    }
  }
  raw["token_embd.weight"] = embd;
  g.tensors.push_back({"token_embd.weight", {32, 8}, 8, q8});
  add("output_norm.weight", 32, 0);
  add("output.weight", 8, 32);
  add("blk.0.attn_norm.weight", 32, 0);
  add("blk.0.attn_q.weight", 32, 32);
  add("blk.0.attn_k.weight", 16, 32);
  add("blk.0.attn_v.weight", 16, 32);
  add("blk.0.attn_output.weight", 32, 32);
  add("blk.0.ffn_norm.weight", 32, 0);
  add("blk.0.ffn_down.weight", 32, 32);
  torch::Tensor up = torch::randn({32, 32}).to(torch::kFloat16), gate = torch::randn({32, 32}).to(torch::kBFloat16);
  raw["blk.0.ffn_up.weight"] = up.to(torch::kFloat32);
  raw["blk.0.ffn_gate.weight"] = gate.to(torch::kFloat32);
  g.tensors.push_back({"blk.0.ffn_up.weight", {32, 32}, 1, std::string(static_cast<const char*>(up.data_ptr()), 2048)});
  g.tensors.push_back({"blk.0.ffn_gate.weight", {32, 32}, 30, std::string(static_cast<const char*>(gate.data_ptr()), 2048)});
  return g;
}

TEST(Gguf, DequantizesQ8_0F16Bf16AndMapsNames) {
  test::TempDir dir;
  TensorMap raw;
  GgufBuilder g = tiny_llama_gguf(raw);
  write_file_atomic(dir / "tiny.gguf", g.build());
  ModelFiles m = read_gguf(dir / "tiny.gguf");
  EXPECT_EQ(m.tokenizer, nullptr);  // no tokenizer metadata
  EXPECT_EQ(m.config.hidden_size, 32);
  EXPECT_EQ(m.config.num_kv_heads, 1);
  EXPECT_EQ(m.config.head_dim, 16);
  EXPECT_EQ(m.config.norm_eps, 1e-6);
  EXPECT_FALSE(m.config.tie_word_embeddings);

  // Q8_0 by hand: row 3 has scale 1.0 and quants k - 13: -13, -12, ...; row 0 scale 0.25.
  const torch::Tensor& e = m.weights.at("model.embed_tokens.weight");
  EXPECT_EQ(e.sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(e[3][0].item<float>(), -13.0f);
  EXPECT_EQ(e[3][31].item<float>(), 18.0f);
  EXPECT_EQ(e[0][0].item<float>(), -4.0f);
  EXPECT_EQ(e[7][31].item<float>(), 2.0f * 22);
  EXPECT_TRUE(torch::equal(e, raw["token_embd.weight"]));

  EXPECT_TRUE(torch::equal(m.weights.at("model.layers.0.mlp.up_proj.weight"), raw["blk.0.ffn_up.weight"]));
  EXPECT_TRUE(torch::equal(m.weights.at("model.layers.0.mlp.gate_proj.weight"), raw["blk.0.ffn_gate.weight"]));
  EXPECT_TRUE(torch::equal(m.weights.at("lm_head.weight"), raw["output.weight"]));
  EXPECT_TRUE(torch::equal(m.weights.at("model.layers.0.self_attn.q_proj.weight"),
                           rotary_interleaved_to_half(raw["blk.0.attn_q.weight"], 2)));
  EXPECT_TRUE(torch::equal(m.weights.at("model.layers.0.self_attn.k_proj.weight"),
                           rotary_interleaved_to_half(raw["blk.0.attn_k.weight"], 1)));
  EXPECT_TRUE(torch::equal(m.weights.at("model.layers.0.self_attn.v_proj.weight"), raw["blk.0.attn_v.weight"]));

  g.version = 2;  // v2 has the same layout
  write_file_atomic(dir / "v2.gguf", g.build());
  expect_same_weights(read_gguf(dir / "v2.gguf").weights, m.weights);
}

TEST(Gguf, UnsupportedTensorTypeAndVersion) {
  test::TempDir dir;
  TensorMap raw;
  GgufBuilder g = tiny_llama_gguf(raw);
  g.tensors.back().type = 12;  // Q4_K
  write_file_atomic(dir / "q4k.gguf", g.build());
  expect_error([&] { read_gguf(dir / "q4k.gguf"); }, {"q4k.gguf", "blk.0.ffn_gate.weight", "Q4_K", "not supported"});

  std::string real = read_file(stories() / "stories260K.gguf");
  std::string v1 = real;
  v1[4] = 1;
  write_file_atomic(dir / "v1.gguf", v1);
  expect_error([&] { read_gguf(dir / "v1.gguf"); }, {"v1.gguf", "version 1", "not supported"});
  std::string v9 = real;
  v9[4] = 9;
  write_file_atomic(dir / "v9.gguf", v9);
  expect_error([&] { read_gguf(dir / "v9.gguf"); }, {"v9.gguf", "unsupported GGUF version 9"});
  std::string magic = real;
  magic.replace(0, 4, "GGML");
  write_file_atomic(dir / "magic.gguf", magic);
  expect_error([&] { read_gguf(dir / "magic.gguf"); }, {"magic.gguf", "bad magic 'GGML'"});
  expect_error([&] { read_model_files(dir / "magic.gguf"); }, {"magic.gguf", "bad magic"});
}

TEST(Gguf, TruncatedAtEveryPartNamesThePart) {
  test::TempDir dir;
  const std::string real = read_file(stories() / "stories260K.gguf");
  auto cut = [&](size_t at) {
    fs::path p = dir / ("cut" + std::to_string(at) + ".gguf");
    write_file_atomic(p, real.substr(0, at));
    return p;
  };
  // Where the parts are: the scores array sits in the metadata, the first tensor name in the
  // tensor infos (it is nowhere in the metadata).
  const size_t scores = real.find("tokenizer.ggml.scores");
  const size_t first_info = real.find("token_embd.weight");
  ASSERT_NE(scores, std::string::npos);
  ASSERT_NE(first_info, std::string::npos);

  expect_error([&] { read_gguf(cut(2)); }, {"cut2.gguf", "truncated", "magic"});
  expect_error([&] { read_gguf(cut(12)); }, {"cut12.gguf", "truncated", "tensor count"});
  expect_error([&] { read_gguf(cut(scores + 200)); }, {"truncated", "metadata key 'tokenizer.ggml.scores'"});
  expect_error([&] { read_gguf(cut(first_info + 30)); }, {"truncated", "tensor 'token_embd.weight'"});
  expect_error([&] { read_gguf(cut(real.size() - 100)); }, {"truncated", "data of tensor 'blk.4.", "past the end"});
  expect_error([&] { read_gguf(cut(0)); }, {"cut0.gguf", "truncated"});

  // A corrupt count must not turn into a giant allocation.
  std::string absurd = real;
  uint64_t n = uint64_t(1) << 60;
  std::memcpy(absurd.data() + 16, &n, 8);  // kv_count
  write_file_atomic(dir / "absurd.gguf", absurd);
  expect_error([&] { read_gguf(dir / "absurd.gguf"); }, {"absurd.gguf", "metadata entries cannot fit"});
  std::string long_array = real;
  const size_t count_at = scores + std::string("tokenizer.ggml.scores").size() + 4 + 4;  // key, type, elem type
  std::memcpy(long_array.data() + count_at, &n, 8);
  write_file_atomic(dir / "array.gguf", long_array);
  expect_error([&] { read_gguf(dir / "array.gguf"); }, {"array.gguf", "tokenizer.ggml.scores", "elements"});
}

// A 1.5 KB file saying block_count = 1e9 used to size the tensor list by it (gigabytes, then
// std::bad_alloc naming no file); the config's limits stop it first.
TEST(Gguf, HugeBlockCountIsAnErrorBeforeAnyAllocation) {
  test::TempDir dir;
  TensorMap raw;
  write_file_atomic(dir / "layers.gguf", tiny_llama_gguf(raw, 1000000000).build());
  expect_error([&] { read_gguf(dir / "layers.gguf"); }, {"layers.gguf", "num_layers 1000000000", "at most 4096"});
}

// Tensor infos pointing at the same bytes would let a small file expand into gigabytes of
// copies: every tensor must have bytes of its own.
TEST(Gguf, TensorsSharingBytesAreAnError) {
  test::TempDir dir;
  TensorMap raw;
  GgufBuilder g = tiny_llama_gguf(raw);
  write_file_atomic(dir / "ok.gguf", g.build());
  EXPECT_NO_THROW(read_gguf(dir / "ok.gguf"));
  for (auto& t : g.tensors)
    if (t.name == "blk.0.attn_k.weight" || t.name == "blk.0.attn_v.weight") t.offset = 0;  // both on token_embd's bytes
  write_file_atomic(dir / "alias.gguf", g.build());
  expect_error([&] { read_gguf(dir / "alias.gguf"); }, {"alias.gguf", "overlaps", "token_embd.weight"});
}

// Random damage to the header, metadata and tensor infos, and truncation anywhere: each read
// either succeeds (the damage hit a value nobody checks) or is an rlhf::Error; never a crash,
// another exception type, a hang or a giant allocation.
TEST(Gguf, DamagedFilesFailCleanly) {
  test::TempDir dir;
  const std::string real = read_file(stories() / "stories260K.gguf");
  const size_t data_start = 14176;  // first tensor's data; everything before it is structure
  std::mt19937 rng(7);
  int errors = 0;
  auto try_read = [&](const std::string& bytes, const std::string& what) {
    write_file_atomic(dir / "d.gguf", bytes);
    try {
      read_gguf(dir / "d.gguf");
    } catch (const Error& e) {
      ++errors;
      EXPECT_NE(std::string(e.what()).find("d.gguf"), std::string::npos) << what << ": " << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": not an rlhf::Error: " << e.what();
    }
  };
  for (int k = 0; k < 150; ++k) {
    std::string bad = real;
    const size_t at = rng() % data_start;
    const char values[] = {'\xff', '\x7f', '\x00', '\x80', static_cast<char>(rng())};
    bad[at] = values[k % 5];
    try_read(bad, "byte " + std::to_string(at) + " changed");
  }
  for (int k = 0; k < 60; ++k) {
    const size_t at = rng() % real.size();
    try_read(real.substr(0, at), "cut at " + std::to_string(at));
  }
  EXPECT_GT(errors, 60);  // at least every truncation
}

// ---------------------------------------------------------------- llama2.c

TEST(Llama2c, TruncatedTrailingAndMissingTokenizer) {
  test::TempDir dir;
  const std::string real = read_file(stories() / "stories260K.bin");
  write_file_atomic(dir / "short.bin", real.substr(0, real.size() - 4));
  expect_error([&] { read_llama2c(dir / "short.bin"); }, {"short.bin", "truncated", "1056540"});
  write_file_atomic(dir / "long.bin", real + std::string(4, '\0'));
  expect_error([&] { read_llama2c(dir / "long.bin"); }, {"long.bin", "unexpected trailing bytes"});
  write_file_atomic(dir / "header.bin", real.substr(0, 10));
  expect_error([&] { read_llama2c(dir / "header.bin"); }, {"header.bin", "truncated", "header"});
  std::string zero_heads = real;
  std::memset(zero_heads.data() + 12, 0, 4);
  write_file_atomic(dir / "heads.bin", zero_heads);
  expect_error([&] { read_llama2c(dir / "heads.bin"); }, {"heads.bin", "corrupt header", "n_heads=0"});

  write_file_atomic(dir / "model.bin", real);  // no tokenizer beside it
  expect_error([&] { read_llama2c(dir / "model.bin"); }, {"model.bin", "tokenizer.bin", "tok512.bin"});
}

// ---------------------------------------------------------------- config.json

TEST(Config, RoundTripsForEachArchitecture) {
  for (const char* arch : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = tiny_config(arch);
    json j = c.to_hf_json();
    EXPECT_EQ(j["architectures"][0], arch);
    ModelConfig back = ModelConfig::from_hf_json(json::parse(j.dump()), "config.json");
    expect_same_config(c, back);
    EXPECT_EQ(back.num_parameters(), c.num_parameters());
  }
}

TEST(Config, ReadsTheVariantsFoundInTheWild) {
  // transformers 4: rope_theta at the top level, one eos id, no head_dim, no kv heads.
  json llama4 = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 100}, {"hidden_size", 64},
                 {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                 {"rope_theta", 500000.0}, {"rms_norm_eps", 1e-5}, {"eos_token_id", 2}, {"rope_scaling", nullptr}};
  ModelConfig c = ModelConfig::from_hf_json(llama4, "a/config.json");
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  // transformers 5: rope_parameters, a list of eos ids.
  json llama5 = llama4;
  llama5.erase("rope_theta");
  llama5["rope_parameters"] = {{"rope_theta", 1e6}, {"rope_type", "default"}};
  llama5["eos_token_id"] = {2, 7};
  c = ModelConfig::from_hf_json(llama5, "b/config.json");
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7}));
  llama5["rope_parameters"]["rope_type"] = "llama3";
  expect_error([&] { ModelConfig::from_hf_json(llama5, "c/config.json"); }, {"c/config.json", "llama3", "not supported"});
  // GPT-2: n_inner null means 4C; tied by default.
  json gpt2 = {{"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", 50257}, {"n_embd", 64}, {"n_layer", 2},
               {"n_head", 4}, {"n_positions", 128}, {"n_inner", nullptr}};
  c = ModelConfig::from_hf_json(gpt2, "g/config.json");
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{50256}));
  // Qwen2: q/k/v biases, none on o.
  json qwen = llama4;
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  c = ModelConfig::from_hf_json(qwen, "q/config.json");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.attention_out_bias);
}

// Sizes no real model has (num_hidden_layers 1e9 in a few bytes of config.json) are Errors
// naming the file before anything is allocated from them.
TEST(Config, AbsurdSizesAreErrors) {
  const json ok = tiny_config("LlamaForCausalLM").to_hf_json();
  for (const auto& [field, value] : std::vector<std::pair<std::string, int64_t>>{
           {"num_hidden_layers", 1000000000}, {"vocab_size", int64_t{1} << 40}, {"hidden_size", int64_t{1} << 30},
           {"intermediate_size", int64_t{1} << 40}, {"num_attention_heads", 1 << 20}}) {
    SCOPED_TRACE(field);
    json j = ok;
    j[field] = value;
    if (field == "num_attention_heads") j["num_key_value_heads"] = value;
    expect_error([&] { ModelConfig::from_hf_json(j, "big/config.json"); },
                 {"big/config.json", std::to_string(value), "beyond any real model"});
  }
}

TEST(Config, UnknownArchitectureAndBadFields) {
  test::TempDir dir;
  json j = {{"architectures", {"FooForCausalLM"}}, {"vocab_size", 10}};
  write_file_atomic(dir / "config.json", j.dump());
  expect_error([&] { read_hf_dir(dir.path); },
               {(dir / "config.json").string(), "unknown architecture 'FooForCausalLM'", "LlamaForCausalLM"});
  json missing = {{"architectures", {"LlamaForCausalLM"}}, {"vocab_size", 10}};
  expect_error([&] { ModelConfig::from_hf_json(missing, "m/config.json"); }, {"m/config.json", "missing field 'hidden_size'"});
  json wrong_type = tiny_config("LlamaForCausalLM").to_hf_json();
  wrong_type["num_hidden_layers"] = "two";
  expect_error([&] { ModelConfig::from_hf_json(wrong_type, "w/config.json"); }, {"w/config.json", "num_hidden_layers", "integer"});
  json gqa = tiny_config("LlamaForCausalLM").to_hf_json();
  gqa["num_key_value_heads"] = 3;
  expect_error([&] { ModelConfig::from_hf_json(gqa, "k/config.json"); }, {"k/config.json", "multiple of num_kv_heads"});
}

// ---------------------------------------------------------------- weights check

TEST(ValidateWeights, NamesTheWrongMissingAndExtraTensors) {
  ModelConfig cfg = tiny_config("LlamaForCausalLM");
  TensorMap w = random_weights(cfg);
  validate_weights(cfg, w, "ok");
  TensorMap bad = w;
  bad["model.layers.1.self_attn.q_proj.weight"] = torch::zeros({32, 31});
  expect_error([&] { validate_weights(cfg, bad, "model.gguf"); },
               {"model.gguf", "tensor model.layers.1.self_attn.q_proj.weight has shape [32, 31], expected [32, 32]"});
  bad = w;
  bad["model.layers.0.extra.weight"] = torch::zeros({3});
  bad.erase("model.norm.weight");
  expect_error([&] { validate_weights(cfg, bad, "x.bin"); },
               {"x.bin", "missing tensor(s) model.norm.weight", "unexpected tensor(s) model.layers.0.extra.weight"});
  bad = w;
  bad["model.norm.weight"] = torch::zeros({32}, torch::kInt64);
  expect_error([&] { validate_weights(cfg, bad, "y"); }, {"model.norm.weight", "floating-point"});
}

// ---------------------------------------------------------------- Hugging Face folders

TEST(HfDir, WriteThenReadEachArchitecture) {
  for (const char* arch : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"}) {
    SCOPED_TRACE(arch);
    test::TempDir dir;
    ModelConfig cfg = tiny_config(arch);
    TensorMap w = random_weights(cfg);
    write_hf_dir(dir / "out", cfg, w, nullptr);
    EXPECT_TRUE(fs::exists(dir / "out" / "generation_config.json"));
    EXPECT_FALSE(fs::exists(dir / "out" / "tokenizer.json"));
    ModelFiles back = read_hf_dir(dir / "out");
    expect_same_config(back.config, cfg);
    expect_same_weights(back.weights, w);
    EXPECT_EQ(back.tokenizer, nullptr);
  }
}

TEST(HfDir, Bf16StaysBf16AndDtypeIsRecorded) {
  test::TempDir dir;
  ModelConfig cfg = tiny_config("Qwen2ForCausalLM");
  TensorMap w = random_weights(cfg, torch::kBFloat16);
  write_hf_dir(dir.path, cfg, w, nullptr);
  EXPECT_EQ(json::parse(read_file(dir / "config.json"))["dtype"], "bfloat16");
  expect_same_weights(read_hf_dir(dir.path).weights, w);
}

TEST(HfDir, ShardedIndexAndTiedHeadAndErrors) {
  test::TempDir dir;
  ModelConfig cfg = tiny_config("LlamaForCausalLM");
  TensorMap w = random_weights(cfg);
  write_file_atomic(dir / "config.json", cfg.to_hf_json().dump());
  // Two shards with an index, as save_pretrained writes large models; plus an old buffer.
  TensorMap a, b;
  json map;
  for (const auto& [name, t] : w) {
    bool first = name.find("layers.1") == std::string::npos;
    (first ? a : b)[name] = t;
    map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  b["model.layers.1.self_attn.rotary_emb.inv_freq"] = torch::ones({4});
  write_safetensors(dir / "model-00001-of-00002.safetensors", a);
  write_safetensors(dir / "model-00002-of-00002.safetensors", b);
  write_file_atomic(dir / "model.safetensors.index.json", json({{"weight_map", map}}).dump());
  expect_same_weights(read_model_files(dir.path).weights, w);

  fs::remove(dir / "model-00002-of-00002.safetensors");
  expect_error([&] { read_hf_dir(dir.path); }, {"model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing"});
  fs::remove(dir / "model.safetensors.index.json");
  write_file_atomic(dir / "pytorch_model.bin", std::string("PK"));
  expect_error([&] { read_hf_dir(dir.path); }, {"pytorch_model.bin", "not supported"});

  // A tied model whose file also stores lm_head.weight (some exporters do): the copy is dropped.
  test::TempDir tied;
  ModelConfig tc = tiny_config("Qwen2ForCausalLM");
  TensorMap tw = random_weights(tc);
  TensorMap with_head = tw;
  with_head["lm_head.weight"] = tw["model.embed_tokens.weight"];
  write_file_atomic(tied / "config.json", tc.to_hf_json().dump());
  write_safetensors(tied / "model.safetensors", with_head);
  expect_same_weights(read_hf_dir(tied.path).weights, tw);
}

TEST(ReadModelFiles, PicksTheReaderAndRefusesTheUnknown) {
  test::TempDir dir;
  expect_error([&] { read_model_files(dir / "nope.gguf"); }, {"nope.gguf", "no such file"});
  write_file_atomic(dir / "weights.xyz", std::string("hello"));
  expect_error([&] { read_model_files(dir / "weights.xyz"); }, {"weights.xyz", "cannot tell the model format"});
  write_file_atomic(dir / "pytorch_model.bin", std::string("PK\x03\x04"));
  expect_error([&] { read_model_files(dir / "pytorch_model.bin"); }, {"pytorch_model.bin", "pickle"});
  ModelFiles m = read_model_files(stories() / "stories260K.bin");
  EXPECT_EQ(m.config.max_position_embeddings, 512);
}

}  // namespace
}  // namespace rlhf
