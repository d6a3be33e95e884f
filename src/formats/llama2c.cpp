// llama2.c checkpoint reader (the legacy "v0" .bin that run.c reads): a 7-int32 header, then
// float32 weights in a fixed order. Its q/k rows are in Meta's interleaved rotary layout and
// are turned into HF's rotate_half layout; the tokenizer is a separate .bin file.
#include <cstring>

#include "core/error.h"
#include "formats/binary_file.h"
#include "formats/formats.h"
#include "formats/layouts.h"

namespace rlhf {
namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Finds the tokenizer: the given path, else tokenizer.bin, else tok<vocab>.bin beside the
// checkpoint; the first whose vocabulary has the model's size wins.
std::unique_ptr<Tokenizer> find_tokenizer(const std::filesystem::path& model,
                                          const std::filesystem::path& given, int64_t vocab_size) {
  std::vector<std::filesystem::path> candidates;
  if (!given.empty()) {
    candidates.push_back(given);
  } else {
    candidates.push_back(model.parent_path() / "tokenizer.bin");
    candidates.push_back(model.parent_path() / ("tok" + std::to_string(vocab_size) + ".bin"));
  }
  std::string mismatches;
  for (const auto& p : candidates) {
    if (given.empty() && !std::filesystem::exists(p)) continue;
    auto tok = load_tokenizer(p);
    if (tok->vocab_size() == vocab_size) return tok;
    mismatches += "; " + p.string() + " has " + std::to_string(tok->vocab_size()) + " tokens";
  }
  std::string looked;
  for (const auto& p : candidates) looked += (looked.empty() ? "" : ", ") + p.string();
  throw Error(model.string() + ": no tokenizer with the model's " + std::to_string(vocab_size) +
              " tokens (looked for " + looked + mismatches + "); pass the tokenizer path explicitly");
}

}  // namespace

ModelFiles read_llama2c(const std::filesystem::path& path, const std::filesystem::path& tokenizer_path) try {
  MappedFile file(path);
  const std::string& name = file.name();
  ByteReader r(file.data(), file.size(), name);

  // 1. Header. A negative vocab_size flags an unshared classifier (wcls) at the end.
  Llama2cHeader h = r.read<Llama2cHeader>("the 28-byte llama2.c header");
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t C = h.dim, I = h.hidden_dim, L = h.n_layers, H = h.n_heads, H_kv = h.n_kv_heads,
                V = h.vocab_size < 0 ? -int64_t(h.vocab_size) : h.vocab_size, T = h.seq_len;
  const std::string dims = "dim=" + std::to_string(C) + " hidden_dim=" + std::to_string(I) +
                           " n_layers=" + std::to_string(L) + " n_heads=" + std::to_string(H) +
                           " n_kv_heads=" + std::to_string(H_kv) + " vocab_size=" + std::to_string(h.vocab_size) +
                           " seq_len=" + std::to_string(T);
  // Caps keep every product below in 64 bits; real models are far inside them.
  auto in_range = [](int64_t v, int64_t hi) { return v > 0 && v <= hi; };
  if (!in_range(C, 1 << 20) || !in_range(I, 1 << 20) || !in_range(L, 1 << 12) || !in_range(H, 1 << 12) ||
      !in_range(H_kv, 1 << 12) || !in_range(V, 1 << 24) || !in_range(T, 1 << 24) || C % H != 0 ||
      H % H_kv != 0 || (C / H) % 2 != 0)
    throw Error(name + ": not a llama2.c checkpoint or corrupt header (" + dims + ")");
  const int64_t D = C / H, kv_dim = H_kv * D;

  // 2. The header fixes the file size exactly.
  const uint64_t n_floats = V * C + L * C + L * C * C + 2 * L * kv_dim * C + L * C * C + L * C + 3 * L * I * C + C +
                            T * (D / 2) * 2 + (shared_classifier ? 0 : V * C);
  const uint64_t expected = sizeof(Llama2cHeader) + 4 * n_floats;
  if (file.size() < expected)
    throw Error(name + ": truncated llama2.c checkpoint: the header (" + dims + ") implies " +
                std::to_string(expected) + " bytes, the file has " + std::to_string(file.size()));
  if (file.size() > expected)
    throw Error(name + ": unexpected trailing bytes in llama2.c checkpoint: the header (" + dims + ") implies " +
                std::to_string(expected) + " bytes, the file has " + std::to_string(file.size()) +
                " (is it a newer-version export? only the legacy v0 format is read)");

  // 3. Weights in run.c's order; each is (out, in), as torch's Linear.
  auto take = [&](std::vector<int64_t> shape, const char* what) {
    torch::Tensor t = torch::empty(shape, torch::kFloat32);
    const uint64_t nbytes = t.numel() * 4;
    std::memcpy(t.data_ptr(), r.bytes(nbytes, what).data(), nbytes);
    return t;
  };
  ModelFiles out;
  TensorMap& w = out.weights;
  auto per_layer = [&](torch::Tensor all, const std::string& suffix) {  // (L, ...) -> L tensors
    for (int64_t i = 0; i < L; ++i) w["model.layers." + std::to_string(i) + "." + suffix] = all[i].clone();
  };
  w["model.embed_tokens.weight"] = take({V, C}, "token_embedding_table");
  per_layer(take({L, C}, "rms_att_weight"), "input_layernorm.weight");
  torch::Tensor wq = take({L, C, C}, "wq"), wk = take({L, kv_dim, C}, "wk");
  for (int64_t i = 0; i < L; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".self_attn.";
    w[p + "q_proj.weight"] = rotary_interleaved_to_half(wq[i], H);
    w[p + "k_proj.weight"] = rotary_interleaved_to_half(wk[i], H_kv);
  }
  per_layer(take({L, kv_dim, C}, "wv"), "self_attn.v_proj.weight");
  per_layer(take({L, C, C}, "wo"), "self_attn.o_proj.weight");
  per_layer(take({L, C}, "rms_ffn_weight"), "post_attention_layernorm.weight");
  per_layer(take({L, I, C}, "w1"), "mlp.gate_proj.weight");
  per_layer(take({L, C, I}, "w2"), "mlp.down_proj.weight");
  per_layer(take({L, I, C}, "w3"), "mlp.up_proj.weight");
  w["model.norm.weight"] = take({C}, "rms_final_weight");
  r.skip(4 * uint64_t(T * (D / 2) * 2), "freq_cis_real/imag");  // recomputed from rope_theta
  if (!shared_classifier) w["lm_head.weight"] = take({V, C}, "wcls");

  // 4. Config: what run.c assumes.
  ModelConfig& c = out.config;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = V;
  c.hidden_size = C;
  c.num_layers = L;
  c.num_heads = H;
  c.num_kv_heads = H_kv;
  c.head_dim = D;
  c.intermediate_size = I;
  c.max_position_embeddings = T;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.pad_token_id = -1;
  c.validate(name);
  validate_weights(c, w, name);

  out.tokenizer = find_tokenizer(path, tokenizer_path, V);
  return out;
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

}  // namespace rlhf
