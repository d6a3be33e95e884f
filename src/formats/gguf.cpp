// GGUF reader (v2/v3, llama.cpp's format): metadata, tensor infos, F32/F16/BF16/Q8_0 data
// dequantized to float32, llama/gpt2 tensor names mapped to canonical ones, the config and
// the tokenizer rebuilt from the metadata. Every count and offset is checked against the
// file size before use, and no two tensors may share bytes, so a corrupt file is an Error,
// never a crash or a huge allocation.
#include <c10/util/Half.h>

#include <cctype>
#include <charconv>
#include <cstring>
#include <regex>

#include "core/error.h"
#include "formats/binary_file.h"
#include "formats/formats.h"
#include "formats/layouts.h"
#include "formats/model_metadata.h"

namespace rlhf {
namespace {

// GGUF metadata value types (gguf.py GGUFValueType).
enum GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
const char* kTypeNames[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32", "float32",
                            "bool",  "string", "array",  "uint64", "int64", "float64"};

// ggml tensor types we read, and names for the ones we refuse (so the error can say which).
constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ8_0 = 8, kGgmlBF16 = 30;
constexpr int64_t kQ8Block = 32;                          // values per Q8_0 block
constexpr uint64_t kQ8BlockBytes = 2 + kQ8Block;          // fp16 scale + 32 int8

std::string ggml_type_name(uint32_t t) {
  static const std::map<uint32_t, const char*> names = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {6, "Q5_0"},    {7, "Q5_1"},
      {8, "Q8_0"},    {9, "Q8_1"},    {10, "Q2_K"},   {11, "Q3_K"},   {12, "Q4_K"},   {13, "Q5_K"},
      {14, "Q6_K"},   {15, "Q8_K"},   {16, "IQ2_XXS"}, {17, "IQ2_XS"}, {18, "IQ3_XXS"}, {19, "IQ1_S"},
      {20, "IQ4_NL"}, {21, "IQ3_S"},  {22, "IQ2_S"},  {23, "IQ4_XS"}, {24, "I8"},     {25, "I16"},
      {26, "I32"},    {27, "I64"},    {28, "F64"},    {29, "IQ1_M"},  {30, "BF16"},   {34, "TQ1_0"},
      {35, "TQ2_0"},  {39, "MXFP4"}};
  auto it = names.find(t);
  return it != names.end() ? it->second : "type " + std::to_string(t);
}

// One metadata value. Numbers keep both an integer and a floating view; arrays of strings or
// numbers keep their elements (nested arrays are skipped over, no key we use has them).
struct GgufValue {
  uint32_t type = 0;
  bool is_integer = false;
  int64_t i = 0;       // integers (uint64 values above INT64_MAX are clamped; none we use are)
  double f = 0;        // every number, and bools
  std::string s;
  uint32_t elem_type = 0;
  uint64_t count = 0;  // array length
  std::vector<std::string> strings;
  std::vector<double> numbers;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: fastest-varying dimension first
  uint32_t type = 0;
  uint64_t offset = 0;      // from the start of the data section
};

struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, GgufValue> kv;
  std::vector<GgufTensorInfo> tensors;
  uint64_t data_start = 0;
};

// Smallest encoded size of one value of `type`, to bound counts by the bytes left.
uint64_t min_value_bytes(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kString: case kU64: case kI64: case kF64: return 8;
    case kArray: return 12;
  }
  return 1;
}

std::string read_string(ByteReader& r, const std::string& what) {
  uint64_t n = r.read<uint64_t>(what);
  r.need(n, what);  // the length is checked against the bytes left before anything is allocated
  return std::string(r.bytes(n, what));
}

// Floats are stored as float32; going through the shortest decimal that round-trips the
// float (1e-05, not 9.99999974e-06) keeps configs written from them readable and exact.
double float32_to_double(float v) {
  char buf[32];
  auto res = std::to_chars(buf, buf + sizeof(buf), v);
  return std::strtod(std::string(buf, res.ptr).c_str(), nullptr);
}

void read_scalar(ByteReader& r, uint32_t type, GgufValue& v, const std::string& what) {
  auto set_int = [&](int64_t x) { v.is_integer = true; v.i = x; v.f = static_cast<double>(x); };
  switch (type) {
    case kU8: set_int(r.read<uint8_t>(what)); break;
    case kI8: set_int(r.read<int8_t>(what)); break;
    case kU16: set_int(r.read<uint16_t>(what)); break;
    case kI16: set_int(r.read<int16_t>(what)); break;
    case kU32: set_int(r.read<uint32_t>(what)); break;
    case kI32: set_int(r.read<int32_t>(what)); break;
    case kU64: {
      uint64_t x = r.read<uint64_t>(what);
      set_int(x > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(x));
      break;
    }
    case kI64: set_int(r.read<int64_t>(what)); break;
    case kF32: v.f = float32_to_double(r.read<float>(what)); break;
    case kF64: v.f = r.read<double>(what); break;
    case kBool: v.f = v.i = r.read<uint8_t>(what) != 0; v.is_integer = true; break;
    case kString: v.s = read_string(r, what); break;
    default:
      throw Error(r.file() + ": corrupt metadata: " + what + " has unknown value type " + std::to_string(type));
  }
}

void read_value(ByteReader& r, uint32_t type, GgufValue& v, const std::string& what, int depth) {
  v.type = type;
  if (type != kArray) return read_scalar(r, type, v, what);
  if (depth > 4) throw Error(r.file() + ": corrupt metadata: " + what + " nests arrays too deeply");
  v.elem_type = r.read<uint32_t>(what);
  v.count = r.read<uint64_t>(what);
  if (v.elem_type > kF64)
    throw Error(r.file() + ": corrupt metadata: " + what + " has unknown element type " + std::to_string(v.elem_type));
  if (v.count > r.remaining() / min_value_bytes(v.elem_type))
    throw Error(r.file() + ": truncated or corrupt metadata: " + what + " claims " + std::to_string(v.count) +
                " elements but only " + std::to_string(r.remaining()) + " bytes are left");
  if (v.elem_type == kString) v.strings.reserve(v.count);
  else if (v.elem_type != kArray) v.numbers.reserve(v.count);
  for (uint64_t k = 0; k < v.count; ++k) {
    GgufValue e;
    read_value(r, v.elem_type, e, what, depth + 1);
    if (v.elem_type == kString) v.strings.push_back(std::move(e.s));
    else if (v.elem_type != kArray) v.numbers.push_back(e.is_integer ? static_cast<double>(e.i) : e.f);
  }
}

GgufFile parse_gguf(ByteReader& r) {
  GgufFile g;
  const std::string& name = r.file();
  std::string_view magic = r.bytes(4, "the GGUF magic");
  if (magic != "GGUF") {
    std::string shown;
    for (char c : magic) shown += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
    throw Error(name + ": not a GGUF file (bad magic '" + shown + "', expected 'GGUF')");
  }
  g.version = r.read<uint32_t>("the GGUF version");
  if (g.version == 1)
    throw Error(name + ": GGUF version 1 is not supported (only versions 2 and 3); re-convert the "
                       "model with a current llama.cpp");
  if (g.version != 2 && g.version != 3) {
    bool big_endian = (g.version & 0xFFFF) == 0 && (g.version >> 24) >= 1 && (g.version >> 24) <= 3;
    throw Error(name + ": unsupported GGUF version " + std::to_string(g.version) +
                (big_endian ? " (a big-endian GGUF file; only little-endian is supported)"
                            : " (supported: 2 and 3)"));
  }
  const uint64_t n_tensors = r.read<uint64_t>("the tensor count");
  const uint64_t n_kv = r.read<uint64_t>("the metadata count");
  // A key-value pair takes at least 13 bytes, a tensor info at least 28.
  if (n_kv > r.remaining() / 13)
    throw Error(name + ": corrupt GGUF header: " + std::to_string(n_kv) + " metadata entries cannot fit in the file");
  if (n_tensors > r.remaining() / 28)
    throw Error(name + ": corrupt GGUF header: " + std::to_string(n_tensors) + " tensors cannot fit in the file");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = read_string(r, "the name of metadata entry #" + std::to_string(k));
    const std::string what = "metadata key '" + key + "'";
    uint32_t type = r.read<uint32_t>(what);
    GgufValue v;
    read_value(r, type, v, what, 0);
    g.kv[key] = std::move(v);
  }

  uint64_t alignment = 32;
  if (auto it = g.kv.find("general.alignment"); it != g.kv.end()) {
    const GgufValue& a = it->second;
    if (!a.is_integer || a.i <= 0 || (a.i & (a.i - 1)) != 0 || a.i > (1 << 20))
      throw Error(name + ": general.alignment must be a power of two, got " + std::to_string(a.i));
    alignment = static_cast<uint64_t>(a.i);
  }

  g.tensors.reserve(n_tensors);
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = read_string(r, "the name of tensor info #" + std::to_string(k));
    const std::string what = "the info of tensor '" + t.name + "'";
    uint32_t n_dims = r.read<uint32_t>(what);
    if (n_dims == 0 || n_dims > 4)
      throw Error(name + ": corrupt tensor info: tensor '" + t.name + "' has " + std::to_string(n_dims) +
                  " dimensions (1 to 4 expected)");
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t n = r.read<uint64_t>(what);
      if (n > (1ull << 40))
        throw Error(name + ": corrupt tensor info: tensor '" + t.name + "' has absurd dimension " + std::to_string(n));
      t.ne.push_back(static_cast<int64_t>(n));
    }
    t.type = r.read<uint32_t>(what);
    t.offset = r.read<uint64_t>(what);
    if (t.offset % alignment != 0)
      throw Error(name + ": corrupt tensor info: tensor '" + t.name + "' data offset " +
                  std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(alignment));
    g.tensors.push_back(std::move(t));
  }
  g.data_start = (r.pos() + alignment - 1) / alignment * alignment;
  return g;
}

// Bytes the tensor's data takes in the file, after checking its type and that the data lies
// inside the file.
uint64_t data_bytes(const GgufTensorInfo& t, const MappedFile& file, uint64_t data_start) {
  const std::string& name = file.name();
  if (t.type != kGgmlF32 && t.type != kGgmlF16 && t.type != kGgmlBF16 && t.type != kGgmlQ8_0)
    throw Error(name + ": tensor '" + t.name + "' has type " + ggml_type_name(t.type) +
                ", which is not supported (supported: F32, F16, BF16, Q8_0); convert the model "
                "with one of these types");
  uint64_t numel = 1;
  for (int64_t n : t.ne) {
    if (n != 0 && numel > file.size() / static_cast<uint64_t>(n))  // every supported type takes >= 1 byte per value
      throw Error(name + ": tensor '" + t.name + "' is larger than the whole file");
    numel *= static_cast<uint64_t>(n);
  }
  uint64_t nbytes;
  if (t.type == kGgmlQ8_0) {
    if (t.ne[0] % kQ8Block != 0)
      throw Error(name + ": Q8_0 tensor '" + t.name + "' has a row length " + std::to_string(t.ne[0]) +
                  " that is not a multiple of 32");
    nbytes = numel / kQ8Block * kQ8BlockBytes;
  } else {
    nbytes = numel * (t.type == kGgmlF32 ? 4 : 2);
  }
  if (data_start > file.size() || t.offset > file.size() - data_start ||
      nbytes > file.size() - data_start - t.offset)
    throw Error(name + ": truncated file: the data of tensor '" + t.name + "' (" + std::to_string(nbytes) +
                " bytes at offset " + std::to_string(data_start + t.offset) + ") runs past the end of the file (" +
                std::to_string(file.size()) + " bytes)");
  return nbytes;
}

// The tensor's values as float32 in torch order (ggml's ne reversed); `nbytes` from data_bytes().
// keep_stored: a Q8_0 matrix comes as its blocks, (rows, row length / 32 * 34) uint8, and BF16
// as bf16, both copied as stored.
torch::Tensor load_tensor(const GgufTensorInfo& t, const MappedFile& file, uint64_t data_start, uint64_t nbytes,
                          bool keep_stored) {
  const uint8_t* src = file.data() + data_start + t.offset;
  uint64_t numel = 1;
  for (int64_t n : t.ne) numel *= static_cast<uint64_t>(n);

  std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());  // ne=[C, V] is a (V, C) matrix
  if (t.type == kGgmlQ8_0 && keep_stored && shape.size() == 2) {
    torch::Tensor blocks = torch::empty({shape[0], shape[1] / kQ8Block * static_cast<int64_t>(kQ8BlockBytes)}, torch::kUInt8);
    if (nbytes) std::memcpy(blocks.data_ptr(), src, nbytes);
    return blocks;
  }
  if (t.type == kGgmlQ8_0) {
    torch::Tensor out = torch::empty(shape, torch::kFloat32);
    float* y = out.data_ptr<float>();
    for (uint64_t b = 0; b < numel / kQ8Block; ++b) {
      const uint8_t* block = src + b * kQ8BlockBytes;
      uint16_t d_bits;
      std::memcpy(&d_bits, block, 2);
      const float d = static_cast<float>(c10::Half(d_bits, c10::Half::from_bits()));
      const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
      for (int64_t k = 0; k < kQ8Block; ++k) y[b * kQ8Block + k] = d * static_cast<float>(q[k]);
    }
    return out;
  }
  const auto stored = t.type == kGgmlF32 ? torch::kFloat32 : t.type == kGgmlF16 ? torch::kFloat16 : torch::kBFloat16;
  torch::Tensor raw = torch::empty(shape, stored);
  if (nbytes) std::memcpy(raw.data_ptr(), src, nbytes);
  return keep_stored && stored == torch::kBFloat16 ? raw : raw.to(torch::kFloat32);
}

// Typed metadata lookups; errors name the key and what was found.
struct Meta {
  const GgufFile& g;
  const std::string& file;

  const GgufValue* find(const std::string& key) const {
    auto it = g.kv.find(key);
    return it == g.kv.end() ? nullptr : &it->second;
  }
  std::string type_of(const GgufValue& v) const {
    return v.type <= kF64 ? kTypeNames[v.type] : "unknown";
  }
  int64_t integer(const std::string& key) const {
    const GgufValue* v = find(key);
    if (!v) throw Error(file + ": missing metadata key '" + key + "'");
    if (!v->is_integer) throw Error(file + ": metadata key '" + key + "' must be an integer, got " + type_of(*v));
    return v->i;
  }
  int64_t integer(const std::string& key, int64_t def) const { return find(key) ? integer(key) : def; }
  // Token ids: uint32 0xFFFFFFFF (and negatives) mean "none".
  int64_t token_id(const std::string& key, int64_t def) const {
    if (!find(key)) return def;
    int64_t v = integer(key);
    return v < 0 || v == 0xFFFFFFFFll ? -1 : v;
  }
  double number(const std::string& key, double def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type == kString || v->type == kArray)
      throw Error(file + ": metadata key '" + key + "' must be a number, got " + type_of(*v));
    return v->f;
  }
  bool boolean(const std::string& key, bool def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type != kBool) throw Error(file + ": metadata key '" + key + "' must be a bool, got " + type_of(*v));
    return v->i != 0;
  }
  std::string string(const std::string& key, const std::string& def) const {
    const GgufValue* v = find(key);
    if (!v) return def;
    if (v->type != kString) throw Error(file + ": metadata key '" + key + "' must be a string, got " + type_of(*v));
    return v->s;
  }
  const GgufValue* array(const std::string& key, bool strings) const {
    const GgufValue* v = find(key);
    if (!v) return nullptr;
    bool ok = v->type == kArray && (strings ? v->elem_type == kString : v->elem_type != kString && v->elem_type != kArray);
    if (!ok)
      throw Error(file + ": metadata key '" + key + "' must be an array of " + (strings ? "strings" : "numbers"));
    return v;
  }
};

// GGUF tensor name -> canonical name (see tensor_map.h); "" when unknown. blk.N.attn_qkv
// (GPT-2's fused projection) is split by the caller.
std::string canonical_name(const std::string& gguf_name) {
  static const std::map<std::string, std::string> top = {
      {"token_embd", "model.embed_tokens"}, {"position_embd", "model.embed_positions"},
      {"output_norm", "model.norm"},        {"output", "lm_head"}};
  static const std::map<std::string, std::string> block = {
      {"attn_norm", "input_layernorm"},    {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},      {"attn_output", "self_attn.o_proj"},
      {"ffn_norm", "post_attention_layernorm"}, {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},           {"ffn_down", "mlp.down_proj"}};
  static const std::regex block_re(R"(blk\.(\d+)\.(\w+)\.(weight|bias))");
  static const std::regex top_re(R"((\w+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(gguf_name, m, block_re)) {
    auto it = block.find(m[2].str());
    if (it == block.end()) return "";
    return "model.layers." + m[1].str() + "." + it->second + "." + m[3].str();
  }
  if (std::regex_match(gguf_name, m, top_re)) {
    auto it = top.find(m[1].str());
    if (it == top.end()) return "";
    return it->second + "." + m[2].str();
  }
  return "";
}

ModelConfig config_from_metadata(const Meta& meta, const std::string& arch, const TensorMap& weights) {
  const std::string& file = meta.file;
  const std::string p = arch + ".";
  ModelConfig c;
  auto embed = weights.find("model.embed_tokens.weight");
  if (embed == weights.end()) throw Error(file + ": tensor 'token_embd.weight' is missing");
  c.vocab_size = embed->second.size(0);
  c.hidden_size = meta.integer(p + "embedding_length");
  c.num_layers = meta.integer(p + "block_count");
  c.intermediate_size = meta.integer(p + "feed_forward_length");
  c.num_heads = meta.integer(p + "attention.head_count");
  c.num_kv_heads = meta.integer(p + "attention.head_count_kv", c.num_heads);
  c.max_position_embeddings = meta.integer(p + "context_length");
  if (c.num_heads <= 0) throw Error(file + ": metadata " + p + "attention.head_count must be positive");
  c.head_dim = meta.integer(p + "attention.key_length", c.hidden_size / c.num_heads);
  if (arch == "llama") {
    c.architecture = "LlamaForCausalLM";
    c.rope_theta = meta.number(p + "rope.freq_base", 10000.0);
    c.norm_eps = meta.number(p + "attention.layer_norm_rms_epsilon", 1e-5);
    int64_t rot = meta.integer(p + "rope.dimension_count", c.head_dim);
    if (rot != c.head_dim)
      throw Error(file + ": partial rotary embeddings (rope.dimension_count " + std::to_string(rot) +
                  " != head dim " + std::to_string(c.head_dim) + ") are not supported");
    std::string scaling = meta.string(p + "rope.scaling.type", "none");
    if (scaling != "none")
      throw Error(file + ": rope scaling '" + scaling + "' is not supported (only plain rotary positions)");
  } else {  // gpt2
    c.architecture = "GPT2LMHeadModel";
    c.norm = NormType::LayerNorm;
    c.mlp = MlpType::GELU;
    c.positions = PositionType::Learned;
    c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
    c.norm_eps = meta.number(p + "attention.layer_norm_epsilon", 1e-5);
  }
  c.tie_word_embeddings = !weights.count("lm_head.weight");
  // Without tokenizer ids: Llama's conventional 1/2; a GPT-2 vocabulary has no fixed ids.
  c.bos_token_id = meta.token_id("tokenizer.ggml.bos_token_id", arch == "gpt2" ? -1 : 1);
  int64_t eos = meta.token_id("tokenizer.ggml.eos_token_id", arch == "gpt2" ? -1 : 2);
  c.eos_token_ids = eos >= 0 ? std::vector<int64_t>{eos} : std::vector<int64_t>{};
  c.pad_token_id = meta.token_id("tokenizer.ggml.padding_token_id", -1);
  c.validate(file);
  return c;
}

std::vector<TokenType> token_types(const Meta& meta) {
  std::vector<TokenType> types;
  if (const GgufValue* tt = meta.array("tokenizer.ggml.token_type", false)) {
    for (double t : tt->numbers) {
      if (t < 1 || t > 6) throw Error(meta.file + ": tokenizer.ggml.token_type has invalid value " + std::to_string(t));
      types.push_back(static_cast<TokenType>(static_cast<int32_t>(t)));
    }
  }
  return types;
}

std::unique_ptr<Tokenizer> tokenizer_from_metadata(const Meta& meta, int64_t vocab_size) {
  const std::string& file = meta.file;
  const std::string model = meta.string("tokenizer.ggml.model", "");
  if (model.empty() || model == "none") return nullptr;
  const GgufValue* tokens = meta.array("tokenizer.ggml.tokens", true);
  if (!tokens) throw Error(file + ": tokenizer.ggml.model is '" + model + "' but tokenizer.ggml.tokens is missing");
  if (static_cast<int64_t>(tokens->count) > vocab_size)
    throw Error(file + ": the tokenizer has " + std::to_string(tokens->count) +
                " tokens but the embedding only " + std::to_string(vocab_size) + " rows");
  auto id = [&](const char* key, int64_t def) { return static_cast<int32_t>(meta.token_id(key, def)); };
  auto check_len = [&](const char* key, size_t n) {
    if (n != 0 && n != tokens->count)
      throw Error(file + ": " + key + " has " + std::to_string(n) + " entries but tokenizer.ggml.tokens has " +
                  std::to_string(tokens->count));
  };
  if (model == "llama") {
    SpmVocab v;
    v.pieces = tokens->strings;
    if (const GgufValue* s = meta.array("tokenizer.ggml.scores", false))
      v.scores.assign(s->numbers.begin(), s->numbers.end());
    v.types = token_types(meta);
    check_len("tokenizer.ggml.scores", v.scores.size());
    check_len("tokenizer.ggml.token_type", v.types.size());
    v.bos_id = id("tokenizer.ggml.bos_token_id", 1);
    v.eos_id = id("tokenizer.ggml.eos_token_id", 2);
    v.unk_id = id("tokenizer.ggml.unknown_token_id", 0);
    v.pad_id = id("tokenizer.ggml.padding_token_id", -1);
    v.add_bos = meta.boolean("tokenizer.ggml.add_bos_token", true);
    v.add_dummy_prefix = meta.boolean("tokenizer.ggml.add_space_prefix", true);
    return make_spm_tokenizer(std::move(v), file);
  }
  if (model == "gpt2") {
    ByteBpeVocab v;
    v.tokens = tokens->strings;
    if (const GgufValue* m = meta.array("tokenizer.ggml.merges", true)) v.merges = m->strings;
    v.types = token_types(meta);
    check_len("tokenizer.ggml.token_type", v.types.size());
    // llama.cpp's pre-tokenizer names -> ours; others are passed on (and refused there if unknown).
    std::string pre = meta.string("tokenizer.ggml.pre", "default");
    if (pre == "default" || pre == "gpt-2" || pre == "gpt2") pre = "gpt2";
    else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") pre = "llama3";
    else if (pre == "qwen2") pre = "qwen2";
    v.pretokenizer = pre;
    // Llama-3's tokenizer.json sets ignore_merges (a pre-token that is itself in the
    // vocabulary is kept whole); llama.cpp applies the same rule for this pre-tokenizer.
    v.ignore_merges = pre == "llama3";
    v.bos_id = id("tokenizer.ggml.bos_token_id", -1);
    v.eos_id = id("tokenizer.ggml.eos_token_id", -1);
    v.pad_id = id("tokenizer.ggml.padding_token_id", -1);
    v.add_bos = meta.boolean("tokenizer.ggml.add_bos_token", false);
    return make_byte_bpe_tokenizer(std::move(v), file);
  }
  throw Error(file + ": tokenizer model '" + model + "' is not supported (supported: llama, gpt2)");
}

}  // namespace

ModelFiles read_gguf(const std::filesystem::path& path, bool keep_stored) try {
  MappedFile file(path);
  const std::string& name = file.name();
  ByteReader r(file.data(), file.size(), name);
  GgufFile g = parse_gguf(r);
  Meta meta{g, name};

  // 1. Architecture.
  const std::string arch = meta.string("general.architecture", "");
  if (arch.empty()) throw Error(name + ": missing metadata key 'general.architecture'");
  if (arch != "llama" && arch != "gpt2")
    throw Error(name + ": GGUF architecture '" + arch + "' is not supported (supported: llama, gpt2)");
  const int64_t n_head = meta.integer(arch + ".attention.head_count");
  const int64_t n_head_kv = meta.integer(arch + ".attention.head_count_kv", n_head);

  // 2. Every tensor's data inside the file and its own: checked for all before any is copied.
  std::vector<uint64_t> nbytes;
  std::vector<ByteRange> ranges;
  for (const GgufTensorInfo& t : g.tensors) {
    nbytes.push_back(data_bytes(t, file, g.data_start));
    ranges.push_back({t.name, t.offset, t.offset + nbytes.back()});
  }
  check_disjoint(ranges, name);

  // 3. Tensors, dequantized (or kept as Q8_0 blocks) and renamed; llama's q/k rows go back to
  // HF's rotate_half layout (row permutations, the same for blocks).
  ModelFiles out;
  std::map<std::string, int64_t> q8_cols;  // Q8_0 matrices kept as blocks: canonical name -> row length
  for (size_t k = 0; k < g.tensors.size(); ++k) {
    const GgufTensorInfo& t = g.tensors[k];
    torch::Tensor w = load_tensor(t, file, g.data_start, nbytes[k], keep_stored);
    const bool blocks = w.scalar_type() == torch::kUInt8;
    std::smatch m;
    static const std::regex qkv_re(R"(blk\.(\d+)\.attn_qkv\.(weight|bias))");
    if (arch == "gpt2" && std::regex_match(t.name, m, qkv_re)) {
      // (3C, C) rows are q, k, v (llama.cpp's converter already turned Conv1D into (out, in)).
      if (w.size(0) == 0 || w.size(0) % 3 != 0)
        throw Error(name + ": tensor '" + t.name + "' does not split into q, k and v (shape " +
                    c10::str(w.sizes()) + ")");
      auto parts = w.chunk(3, 0);
      const std::string p = "model.layers." + m[1].str() + ".self_attn.", kind = m[2].str();
      out.weights[p + "q_proj." + kind] = parts[0].contiguous();
      out.weights[p + "k_proj." + kind] = parts[1].contiguous();
      out.weights[p + "v_proj." + kind] = parts[2].contiguous();
      if (blocks)
        for (const char* n : {"q_proj.", "k_proj.", "v_proj."}) q8_cols[p + n + kind] = t.ne[0];
      continue;
    }
    std::string cname = canonical_name(t.name);
    if (cname.empty()) cname = t.name;  // unknown: validate_weights names it
    const bool is_q = cname.find(".self_attn.q_proj.") != std::string::npos;
    const bool is_k = cname.find(".self_attn.k_proj.") != std::string::npos;
    if (arch == "llama" && (is_q || is_k)) {
      const int64_t heads = is_q ? n_head : n_head_kv;
      if (heads <= 0 || w.size(0) % (2 * heads) != 0)
        throw Error(name + ": tensor '" + t.name + "' has " + std::to_string(w.size(0)) +
                    " rows, which do not split into " + std::to_string(heads) + " heads of an even size");
      w = rotary_interleaved_to_half(w, heads);
    }
    if (out.weights.count(cname)) throw Error(name + ": tensor '" + t.name + "' appears twice");
    out.weights[cname] = w;
    if (blocks) q8_cols[cname] = t.ne[0];
  }
  // llama.cpp's converters write output.weight even for tied models (llama2.c's stories
  // models among them); a bit-identical copy of the embedding means the model is tied.
  auto head = out.weights.find("lm_head.weight");
  auto embed = out.weights.find("model.embed_tokens.weight");
  if (head != out.weights.end() && embed != out.weights.end() && head->second.sizes() == embed->second.sizes() &&
      torch::equal(head->second, embed->second))
    out.weights.erase(head);
  // Blocks become packed weights; checks see a float stand-in of each one's shape.
  TensorMap shapes = out.weights;
  for (const auto& [cname, cols] : q8_cols) {
    auto it = out.weights.find(cname);
    if (it == out.weights.end()) continue;  // the tied copy of the embedding, dropped above
    const int64_t rows = it->second.size(0);
    shapes[cname] = torch::empty_strided({rows, cols}, {0, 0});
    out.packed[cname] = q8_0_from_blocks(it->second, rows, cols);
    out.weights.erase(it);
  }

  // 4. Config and tokenizer from the metadata.
  out.config = config_from_metadata(meta, arch, shapes);
  validate_weights(out.config, shapes, name);
  out.tokenizer = tokenizer_from_metadata(meta, out.config.vocab_size);
  return out;
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

std::string read_gguf_string(const std::filesystem::path& path, const std::string& key, const std::string& fallback) try {
  MappedFile file(path);
  ByteReader r(file.data(), file.size(), file.name());
  GgufFile g = parse_gguf(r);
  return Meta{g, file.name()}.string(key, fallback);
} catch (...) {
  rethrow_naming(path.string());
}

}  // namespace rlhf
