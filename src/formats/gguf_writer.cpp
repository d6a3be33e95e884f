// GGUF writer (v3), so a model trained or converted here runs in llama.cpp and Ollama: the
// metadata llama.cpp's loader reads for the llama and gpt2 architectures, the tokenizer in
// tokenizer.ggml.*, and the tensors under llama.cpp's names, as its own converter
// (convert_hf_to_gguf.py) lays them out: Meta's interleaved rotary rows for llama's q/k,
// GPT-2's q/k/v fused into attn_qkv, one-dimensional tensors (norms, biases) in F32 whatever
// the file type, and a matrix whose rows are not whole Q8_0 blocks in F16. formats/gguf.cpp
// reads all of it back.
#include <c10/util/Half.h>

#include <cstring>
#include <ostream>

#include "core/error.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/gguf_writer.h"
#include "formats/layouts.h"
#include "tokenizer/vocab_export.h"

namespace rlhf {
namespace {

// GGUF metadata value types and ggml tensor types (gguf.py's GGUFValueType, GGMLQuantizationType).
enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
enum : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ8_0 = 8, kGgmlBF16 = 30 };
constexpr uint64_t kAlignment = 32;  // general.alignment's default, which readers assume

// Little-endian byte sink for the header (x86 and ARM Linux are little-endian, as GGUF is).
struct Header {
  std::string bytes;
  uint64_t n_kv = 0;

  template <class T>
  void raw(T v) { bytes.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void str(const std::string& s) {
    raw<uint64_t>(s.size());
    bytes += s;
  }
  void key(const std::string& k, uint32_t type) {
    str(k);
    raw<uint32_t>(type);
    ++n_kv;
  }
  void u32(const std::string& k, int64_t v) { key(k, kU32), raw<uint32_t>(static_cast<uint32_t>(v)); }
  void f32(const std::string& k, double v) { key(k, kF32), raw<float>(static_cast<float>(v)); }
  void boolean(const std::string& k, bool v) { key(k, kBool), raw<uint8_t>(v ? 1 : 0); }
  void string(const std::string& k, const std::string& v) { key(k, kString), str(v); }
  void strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArray), raw<uint32_t>(kString), raw<uint64_t>(v.size());
    for (const auto& s : v) str(s);
  }
  void f32s(const std::string& k, const std::vector<float>& v) {
    key(k, kArray), raw<uint32_t>(kF32), raw<uint64_t>(v.size());
    for (float x : v) raw<float>(x);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, kArray), raw<uint32_t>(kI32), raw<uint64_t>(v.size());
    for (int32_t x : v) raw<int32_t>(x);
  }
  void token_id(const std::string& k, int64_t id) {
    if (id >= 0) u32(k, id);
  }
};

struct OutTensor {
  std::string name;
  torch::Tensor data;  // contiguous CPU bytes as stored: float32, float16, bfloat16 or Q8_0 blocks (uint8)
  std::vector<int64_t> shape;  // torch order
  uint32_t type;
};

// One tensor in the file's type: matrices in `type`, everything one-dimensional in F32.
OutTensor encode(const std::string& name, const torch::Tensor& w_in, GgufFileType type) {
  const auto w = w_in.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  OutTensor t{name, {}, w.sizes().vec(), kGgmlF32};
  const bool matrix = w.dim() == 2;
  if (!matrix || type == GgufFileType::F32) {
    t.data = w;
  } else if (type == GgufFileType::Q8_0 && w.size(1) % kQ8_0Block == 0) {
    t.data = pack(w, WeightFormat::Q8_0).data, t.type = kGgmlQ8_0;  // llama.cpp's blocks, rows in order
  } else if (type == GgufFileType::BF16) {
    t.data = w.to(torch::kBFloat16).contiguous(), t.type = kGgmlBF16;
  } else {  // F16, and Q8_0's fallback for rows that are not whole blocks (as llama.cpp's converter)
    t.data = w.to(torch::kFloat16).contiguous(), t.type = kGgmlF16;
  }
  return t;
}

const torch::Tensor& need(const TensorMap& w, const std::string& name) {
  auto it = w.find(name);
  check(it != w.end(), "write_gguf: the model has no tensor " + name);
  return it->second;
}

// Tensors under llama.cpp's names.
std::vector<OutTensor> tensors_of(const ModelConfig& c, const TensorMap& w, bool gpt2, GgufFileType type) {
  std::vector<OutTensor> out;
  auto add = [&](const std::string& name, const torch::Tensor& t) { out.push_back(encode(name, t, type)); };
  auto add_if = [&](const std::string& name, const std::string& canonical) {
    if (auto it = w.find(canonical); it != w.end()) add(name, it->second);
  };
  add("token_embd.weight", need(w, "model.embed_tokens.weight"));
  if (gpt2) add("position_embd.weight", need(w, "model.embed_positions.weight"));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
    for (const char* kind : {"weight", "bias"}) {
      const std::string k = kind;
      add_if(b + "attn_norm." + k, p + "input_layernorm." + k);
      const std::string q = p + "self_attn.q_proj." + k, kk = p + "self_attn.k_proj." + k, v = p + "self_attn.v_proj." + k;
      if (w.count(q)) {
        if (gpt2) {
          add(b + "attn_qkv." + k, torch::cat({need(w, q), need(w, kk), need(w, v)}, 0));
        } else {  // llama.cpp rotates Meta's interleaved pairs: undo HF's rotate_half layout
          add(b + "attn_q." + k, rotary_half_to_interleaved(need(w, q), c.num_heads));
          add(b + "attn_k." + k, rotary_half_to_interleaved(need(w, kk), c.num_kv_heads));
          add(b + "attn_v." + k, need(w, v));
        }
      }
      add_if(b + "attn_output." + k, p + "self_attn.o_proj." + k);
      add_if(b + "ffn_norm." + k, p + "post_attention_layernorm." + k);
      add_if(b + "ffn_gate." + k, p + "mlp.gate_proj." + k);
      add_if(b + "ffn_up." + k, p + "mlp.up_proj." + k);
      add_if(b + "ffn_down." + k, p + "mlp.down_proj." + k);
    }
  }
  add_if("output_norm.weight", "model.norm.weight");
  add_if("output_norm.bias", "model.norm.bias");
  // Tied models: llama.cpp's llama falls back to token_embd without output.weight; its GPT-2
  // loader wants the matrix, so GPT-2 gets the copy (our reader drops an identical copy again).
  if (w.count("lm_head.weight")) add("output.weight", w.at("lm_head.weight"));
  else if (gpt2) add("output.weight", need(w, "model.embed_tokens.weight"));
  return out;
}

// llama.cpp's pre-tokenizer names for ours.
std::string gguf_pretokenizer(const std::string& ours) {
  if (ours == "gpt2") return "gpt-2";
  if (ours == "llama3") return "llama-bpe";
  if (ours == "qwen2") return "qwen2";
  throw Error("write_gguf: the tokenizer's pre-tokenizer '" + ours +
              "' has no llama.cpp name (supported: gpt2, llama3, qwen2)");
}

std::vector<int32_t> type_ids(const std::vector<TokenType>& types) {
  std::vector<int32_t> out;
  for (TokenType t : types) out.push_back(static_cast<int32_t>(t));
  return out;
}

// tokenizer.ggml.*; the vocabulary is padded with unused [PAD<i>] entries up to the
// embedding's rows, as llama.cpp's converter pads it (llama.cpp sizes the embedding by it).
void write_tokenizer(Header& h, const Tokenizer& tok, int64_t vocab_rows) {
  const int64_t n = tok.vocab_size();
  check(n <= vocab_rows, "write_gguf: the tokenizer has " + std::to_string(n) + " tokens but the embedding only " +
                             std::to_string(vocab_rows) + " rows");
  auto padded = [&](std::vector<std::string> tokens, std::vector<int32_t> types) {
    for (int64_t i = n; i < vocab_rows; ++i) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.push_back(static_cast<int32_t>(TokenType::Unused));
    }
    h.strings("tokenizer.ggml.tokens", tokens);
    h.i32s("tokenizer.ggml.token_type", types);
  };
  if (const SpmVocab* v = spm_vocab_of(tok)) {
    h.string("tokenizer.ggml.model", "llama");
    h.string("tokenizer.ggml.pre", "default");
    padded(v->pieces, type_ids(v->types));
    // llama.cpp merges SentencePiece-style by score. A vocabulary read from tokenizer.json has
    // merge ranks instead: the piece a merge makes scores minus its rank (earlier merges first).
    std::vector<float> scores = v->scores;
    if (scores.empty()) {
      scores.assign(v->pieces.size(), -static_cast<float>(v->merges.size() + 1));
      for (size_t r = 0; r < v->merges.size(); ++r) {
        const int32_t id = tok.token_id(v->merges[r].first + v->merges[r].second);
        if (id >= 0 && scores[id] < -static_cast<float>(r)) scores[id] = -static_cast<float>(r);
      }
    }
    scores.resize(vocab_rows, -1e9f);
    h.f32s("tokenizer.ggml.scores", scores);
    h.token_id("tokenizer.ggml.unknown_token_id", v->unk_id);
    h.boolean("tokenizer.ggml.add_space_prefix", v->add_dummy_prefix);
  } else if (const ByteBpeVocab* v = byte_bpe_vocab_of(tok)) {
    h.string("tokenizer.ggml.model", "gpt2");
    h.string("tokenizer.ggml.pre", gguf_pretokenizer(v->pretokenizer));
    padded(v->tokens, type_ids(v->types));
    h.strings("tokenizer.ggml.merges", v->merges);
  } else {
    throw Error("write_gguf: this tokenizer kind cannot be written to GGUF metadata");
  }
  h.token_id("tokenizer.ggml.bos_token_id", tok.bos_id());
  h.token_id("tokenizer.ggml.eos_token_id", tok.eos_id());
  h.token_id("tokenizer.ggml.padding_token_id", tok.pad_id());
  h.boolean("tokenizer.ggml.add_bos_token", tok.add_bos_default());
  h.boolean("tokenizer.ggml.add_eos_token", false);
}

}  // namespace

GgufFileType parse_gguf_file_type(const std::string& name) {
  if (name == "f32" || name == "F32" || name == "float32") return GgufFileType::F32;
  if (name == "f16" || name == "F16" || name == "float16") return GgufFileType::F16;
  if (name == "bf16" || name == "BF16" || name == "bfloat16") return GgufFileType::BF16;
  if (name == "q8_0" || name == "Q8_0") return GgufFileType::Q8_0;
  throw Error("unknown GGUF type '" + name + "' (expected f32, f16, bf16 or q8_0)");
}

void write_gguf(const std::filesystem::path& path, const ModelConfig& c, const TensorMap& weights,
                const Tokenizer* tokenizer, GgufFileType type, const std::string& name) {
  const bool llama = c.norm == NormType::RMSNorm && c.mlp == MlpType::SwiGLU && c.positions == PositionType::Rotary;
  const bool gpt2 = c.norm == NormType::LayerNorm && c.mlp == MlpType::GELU && c.positions == PositionType::Learned;
  check(llama || gpt2, "write_gguf: " + c.architecture +
                           " has no GGUF architecture here (supported: Llama-style models with RMSNorm, SwiGLU and "
                           "rotary positions, and GPT-2)");
  check(!llama || !c.mlp_bias, "write_gguf: llama.cpp's llama architecture has no MLP biases");
  check(c.num_labels == 0, "write_gguf: a reward model (scalar head) has no GGUF architecture; export a policy");
  check(tokenizer != nullptr, "write_gguf: GGUF carries the tokenizer and this model has none; pass one (--tokenizer)");
  validate_weights(c, weights, "write_gguf");
  const std::string arch = llama ? "llama" : "gpt2", p = arch + ".";

  Header h;
  h.string("general.architecture", arch);
  if (!name.empty()) h.string("general.name", name);
  // llama_ftype: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32.
  const int64_t ftype = type == GgufFileType::F32 ? 0 : type == GgufFileType::F16 ? 1 : type == GgufFileType::Q8_0 ? 7 : 32;
  h.u32("general.file_type", ftype);
  if (type == GgufFileType::Q8_0) h.u32("general.quantization_version", 2);
  h.u32(p + "context_length", c.max_position_embeddings);
  h.u32(p + "embedding_length", c.hidden_size);
  h.u32(p + "block_count", c.num_layers);
  h.u32(p + "feed_forward_length", c.intermediate_size);
  h.u32(p + "attention.head_count", c.num_heads);
  h.u32(p + "attention.head_count_kv", c.num_kv_heads);
  if (llama) {
    h.u32(p + "vocab_size", c.vocab_size);
    h.u32(p + "rope.dimension_count", c.head_dim);
    h.f32(p + "rope.freq_base", c.rope_theta);
    h.f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
    if (c.head_dim * c.num_heads != c.hidden_size) {
      h.u32(p + "attention.key_length", c.head_dim);
      h.u32(p + "attention.value_length", c.head_dim);
    }
  } else {
    h.f32(p + "attention.layer_norm_epsilon", c.norm_eps);
  }
  write_tokenizer(h, *tokenizer, c.vocab_size);

  const auto tensors = tensors_of(c, weights, gpt2, type);
  std::string infos;
  auto raw = [&](auto v) { infos.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  uint64_t offset = 0;
  std::vector<uint64_t> offsets;
  for (const auto& t : tensors) {
    raw(static_cast<uint64_t>(t.name.size()));
    infos += t.name;
    raw(static_cast<uint32_t>(t.shape.size()));
    for (auto d = t.shape.rbegin(); d != t.shape.rend(); ++d) raw(static_cast<uint64_t>(*d));  // ggml: fastest first
    raw(t.type);
    raw(offset);
    offsets.push_back(offset);
    offset = (offset + t.data.nbytes() + kAlignment - 1) / kAlignment * kAlignment;
  }

  write_file_atomic(path, [&](std::ostream& out) {
    std::string head = "GGUF";
    auto put = [&](auto v) { head.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
    put(static_cast<uint32_t>(3));
    put(static_cast<uint64_t>(tensors.size()));
    put(h.n_kv);
    head += h.bytes;
    head += infos;
    head.resize((head.size() + kAlignment - 1) / kAlignment * kAlignment, '\0');
    out.write(head.data(), static_cast<std::streamsize>(head.size()));
    uint64_t at = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const std::string pad(offsets[i] - at, '\0');
      out.write(pad.data(), static_cast<std::streamsize>(pad.size()));
      out.write(static_cast<const char*>(tensors[i].data.data_ptr()), static_cast<std::streamsize>(tensors[i].data.nbytes()));
      at = offsets[i] + tensors[i].data.nbytes();
    }
  });
}

}  // namespace rlhf
