// ModelConfig <-> Hugging Face config.json for the four supported architectures, the checks
// that a config is one our Transformer (and transformers) can run, and the tensor list.
#include "model/config.h"

#include "core/error.h"

namespace rlhf {
namespace {

using json = nlohmann::json;

const char* kSupported =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel";

bool is_gpt2(const std::string& arch) { return arch == "GPT2LMHeadModel"; }

std::string model_type_of(const std::string& arch) {
  if (arch == "LlamaForCausalLM") return "llama";
  if (arch == "MistralForCausalLM") return "mistral";
  if (arch == "Qwen2ForCausalLM") return "qwen2";
  if (arch == "GPT2LMHeadModel") return "gpt2";
  return "";
}

// <Family>ForSequenceClassification <-> the family's causal-LM class.
const std::vector<std::pair<std::string, std::string>> kClassifiers = {
    {"LlamaForSequenceClassification", "LlamaForCausalLM"},
    {"MistralForSequenceClassification", "MistralForCausalLM"},
    {"Qwen2ForSequenceClassification", "Qwen2ForCausalLM"},
    {"GPT2ForSequenceClassification", "GPT2LMHeadModel"}};

std::string arch_of_model_type(const std::string& model_type) {
  for (const char* a : {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel"})
    if (model_type_of(a) == model_type) return a;
  return "";
}

// Typed field access with errors that name the file and the field. A JSON null counts as
// absent, as transformers treats it.
struct Fields {
  const json& j;
  const std::string& source;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) throw Error(source + ": missing field '" + key + "'");
    const json& v = j.at(key);
    if (!v.is_number_integer())
      throw Error(source + ": field '" + key + "' must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  int64_t integer(const char* key, int64_t def) const { return has(key) ? integer(key) : def; }

  double number(const char* key, double def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_number()) throw Error(source + ": field '" + key + "' must be a number, got " + v.dump());
    return v.get<double>();
  }
  bool boolean(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_boolean()) throw Error(source + ": field '" + key + "' must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_string()) throw Error(source + ": field '" + key + "' must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  // Token ids: an integer, or null/absent (-1 = none declared).
  int64_t token_id(const char* key, int64_t def) const { return has(key) ? integer(key) : def; }
  // eos_token_id may be one id or a list of ids (Llama-3 style).
  std::vector<int64_t> token_ids(const char* key, std::vector<int64_t> def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (v.is_number_integer()) return {v.get<int64_t>()};
    if (v.is_array()) {
      std::vector<int64_t> ids;
      for (const json& e : v) {
        if (!e.is_number_integer())
          throw Error(source + ": field '" + key + "' must be an integer or a list of integers, got " + v.dump());
        ids.push_back(e.get<int64_t>());
      }
      return ids;
    }
    throw Error(source + ": field '" + key + "' must be an integer or a list of integers, got " + v.dump());
  }
};

// rope_theta may sit at the top level (transformers 4) or inside rope_parameters
// (transformers 5) / rope_scaling. Only plain rotary is supported: a scaled variant would
// load without complaint and then produce wrong logits, so it is refused here.
double read_rope_theta(const Fields& f) {
  double theta = f.number("rope_theta", 10000.0);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!f.has(key)) continue;
    const json& rp = f.j.at(key);
    if (!rp.is_object())
      throw Error(f.source + ": field '" + key + "' must be an object, got " + rp.dump());
    Fields sub{rp, f.source};
    std::string type = sub.string("rope_type", sub.string("type", "default"));
    if (type != "default")
      throw Error(f.source + ": " + key + ".rope_type '" + type +
                  "' is not supported (only plain rotary positions, rope_type 'default')");
    theta = sub.number("rope_theta", theta);
  }
  return theta;
}

}  // namespace

ModelConfig ModelConfig::from_hf_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": config.json must be a JSON object");
  Fields f{j, source};
  ModelConfig c;

  // 1. Which architecture: "architectures": ["X"], else the model_type.
  std::string arch;
  if (f.has("architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a.at(0).is_string())
      throw Error(source + ": field 'architectures' must be a non-empty list of class names, got " + a.dump());
    arch = a.at(0).get<std::string>();
  } else {
    std::string mt = f.string("model_type", "");
    arch = arch_of_model_type(mt);
    if (arch.empty())
      throw Error(source + ": unknown architecture (no 'architectures' field, model_type '" + mt +
                  "'; supported: " + kSupported + ")");
  }
  for (const auto& [cls, causal] : kClassifiers)
    if (arch == cls) {
      arch = causal;
      c.num_labels = j.contains("num_labels") && j["num_labels"].is_number_integer() ? j["num_labels"].get<int64_t>()
                     : j.contains("id2label") && j["id2label"].is_object() ? int64_t(j["id2label"].size())
                                                                           : 2;  // transformers' default
      c.reward_gain = j.value("rlhf_reward_gain", 1.0);
      c.reward_bias = j.value("rlhf_reward_bias", 0.0);
    }
  if (model_type_of(arch).empty())
    throw Error(source + ": unknown architecture '" + arch + "' (supported: " + kSupported +
                ", and their ForSequenceClassification classes)");
  c.architecture = arch;

  // 2. Sizes and the family's fixed choices.
  if (is_gpt2(arch)) {
    c.vocab_size = f.integer("vocab_size");
    c.hidden_size = f.integer("n_embd");
    c.num_layers = f.integer("n_layer");
    c.num_heads = f.integer("n_head");
    c.num_kv_heads = c.num_heads;
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0)
      throw Error(source + ": n_embd (" + std::to_string(c.hidden_size) +
                  ") must be a multiple of n_head (" + std::to_string(c.num_heads) + ")");
    c.head_dim = c.hidden_size / c.num_heads;
    c.intermediate_size = f.integer("n_inner", 4 * c.hidden_size);
    c.max_position_embeddings = f.integer("n_positions", 1024);
    c.norm_eps = f.number("layer_norm_epsilon", 1e-5);
    std::string act = f.string("activation_function", "gelu_new");
    if (act != "gelu_new" && act != "gelu_pytorch_tanh")
      throw Error(source + ": activation_function '" + act +
                  "' is not supported (GPT-2 models here use the tanh GELU: gelu_new)");
    if (!f.boolean("scale_attn_weights", true) || f.boolean("scale_attn_by_inverse_layer_idx", false))
      throw Error(source + ": non-standard GPT-2 attention scaling (scale_attn_weights false or "
                           "scale_attn_by_inverse_layer_idx true) is not supported");
    c.norm = NormType::LayerNorm;
    c.mlp = MlpType::GELU;
    c.positions = PositionType::Learned;
    c.attention_bias = c.attention_out_bias = c.mlp_bias = true;
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", true);
    c.bos_token_id = f.token_id("bos_token_id", 50256);
    c.eos_token_ids = f.token_ids("eos_token_id", {50256});
  } else {
    c.vocab_size = f.integer("vocab_size");
    c.hidden_size = f.integer("hidden_size");
    c.num_layers = f.integer("num_hidden_layers");
    c.num_heads = f.integer("num_attention_heads");
    c.num_kv_heads = f.integer("num_key_value_heads", c.num_heads);
    if (c.num_heads <= 0) throw Error(source + ": num_attention_heads must be positive");
    c.head_dim = f.integer("head_dim", c.hidden_size / c.num_heads);
    c.intermediate_size = f.integer("intermediate_size");
    int64_t default_positions = arch == "MistralForCausalLM" ? 4096 * 32
                                : arch == "Qwen2ForCausalLM" ? 32768 : 2048;
    c.max_position_embeddings = f.integer("max_position_embeddings", default_positions);
    c.norm_eps = f.number("rms_norm_eps", 1e-6);
    c.rope_theta = read_rope_theta(f);
    std::string act = f.string("hidden_act", "silu");
    if (act != "silu")
      throw Error(source + ": hidden_act '" + act + "' is not supported (the Llama family uses silu)");
    c.norm = NormType::RMSNorm;
    c.mlp = MlpType::SwiGLU;
    c.positions = PositionType::Rotary;
    c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
    if (arch == "LlamaForCausalLM") {
      c.attention_bias = c.attention_out_bias = f.boolean("attention_bias", false);  // q, k, v and o
      c.mlp_bias = f.boolean("mlp_bias", false);
    } else if (arch == "Qwen2ForCausalLM") {
      c.attention_bias = true;  // Qwen2 always has q/k/v biases and none on o
    }
    // Mistral: absent means transformers' default 4096, an explicit null means none.
    if (arch == "MistralForCausalLM")
      c.sliding_window = !j.contains("sliding_window") ? 4096 : f.integer("sliding_window", 0);
    if (arch == "Qwen2ForCausalLM" && f.boolean("use_sliding_window", false))
      c.sliding_window = f.integer("sliding_window", 4096);
    bool qwen = arch == "Qwen2ForCausalLM";
    c.bos_token_id = f.token_id("bos_token_id", qwen ? -1 : 1);
    c.eos_token_ids = f.token_ids("eos_token_id", qwen ? std::vector<int64_t>{} : std::vector<int64_t>{2});
  }
  c.pad_token_id = f.token_id("pad_token_id", -1);
  // transformers only warns about special ids outside the vocabulary (its default GPT-2
  // config says 50256 whatever the size); such an id can never be produced, so drop it.
  auto in_vocab = [&](int64_t id) { return id >= 0 && id < c.vocab_size; };
  if (!in_vocab(c.bos_token_id)) c.bos_token_id = -1;
  if (!in_vocab(c.pad_token_id)) c.pad_token_id = -1;
  std::erase_if(c.eos_token_ids, [&](int64_t id) { return !in_vocab(id); });
  c.validate(source);
  return c;
}

json ModelConfig::to_hf_json() const {
  json j;
  j["architectures"] = json::array({architecture});
  j["model_type"] = model_type_of(architecture);
  if (num_labels > 0) {
    for (const auto& [cls, causal] : kClassifiers)
      if (causal == architecture) j["architectures"] = json::array({cls});
    j["num_labels"] = num_labels;
    json id2label = json::object(), label2id = json::object();
    for (int64_t i = 0; i < num_labels; ++i) {
      id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
      label2id["LABEL_" + std::to_string(i)] = i;
    }
    j["id2label"] = id2label;
    j["label2id"] = label2id;
    j["rlhf_reward_gain"] = reward_gain;
    j["rlhf_reward_bias"] = reward_bias;
  }
  j["vocab_size"] = vocab_size;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["bos_token_id"] = bos_token_id >= 0 ? json(bos_token_id) : json(nullptr);
  j["eos_token_id"] = eos_token_ids.empty()       ? json(nullptr)
                      : eos_token_ids.size() == 1 ? json(eos_token_ids[0])
                                                  : json(eos_token_ids);
  j["pad_token_id"] = pad_token_id >= 0 ? json(pad_token_id) : json(nullptr);
  // transformers 5 reads "dtype", 4.x "torch_dtype"; write_hf_dir sets both to the weights'.
  j["dtype"] = "float32";
  j["torch_dtype"] = "float32";
  j["use_cache"] = true;
  if (is_gpt2(architecture)) {
    j["n_embd"] = hidden_size;
    j["n_layer"] = num_layers;
    j["n_head"] = num_heads;
    j["n_inner"] = intermediate_size == 4 * hidden_size ? json(nullptr) : json(intermediate_size);  // null: 4C, as GPT-2 writes it
    j["n_positions"] = max_position_embeddings;
    j["n_ctx"] = max_position_embeddings;  // older readers' name for n_positions
    j["layer_norm_epsilon"] = norm_eps;
    j["activation_function"] = "gelu_new";
    return j;
  }
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = norm_eps;
  // Both spellings: rope_parameters for transformers 5, top-level rope_theta for 4.x.
  j["rope_theta"] = rope_theta;
  j["rope_parameters"] = {{"rope_theta", rope_theta}, {"rope_type", "default"}};
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  if (architecture == "LlamaForCausalLM") {
    j["attention_bias"] = attention_bias;
    j["mlp_bias"] = mlp_bias;
  } else if (architecture == "MistralForCausalLM") {
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
  } else if (architecture == "Qwen2ForCausalLM") {
    j["use_sliding_window"] = sliding_window > 0;
    j["sliding_window"] = sliding_window > 0 ? json(sliding_window) : json(nullptr);
    j["max_window_layers"] = num_layers;
  }
  return j;
}

void ModelConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& what) { throw Error(source + ": invalid model config: " + what); };
  auto positive = [&](const char* name, int64_t v) {
    if (v <= 0) fail(std::string(name) + " must be positive, got " + std::to_string(v));
  };
  if (model_type_of(architecture).empty())
    throw Error(source + ": unknown architecture '" + architecture + "' (supported: " + kSupported + ")");
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_layers", num_layers);
  positive("num_heads", num_heads);
  positive("num_kv_heads", num_kv_heads);
  positive("head_dim", head_dim);
  positive("intermediate_size", intermediate_size);
  positive("max_position_embeddings", max_position_embeddings);
  // Limits far above any real model (405B Llama: 126 layers, C = 16384, V = 128256): a corrupt
  // header (block_count 1e9 in a 1.5 KB file) must fail here, before the tensor list or the
  // module is sized by it. They also keep every product of two sizes inside 64 bits.
  auto at_most = [&](const char* name, int64_t v, int64_t limit) {
    if (v > limit)
      fail(std::string(name) + " " + std::to_string(v) + " is beyond any real model (at most " + std::to_string(limit) +
           ")");
  };
  at_most("vocab_size", vocab_size, int64_t{1} << 24);
  at_most("hidden_size", hidden_size, int64_t{1} << 20);
  at_most("num_layers", num_layers, int64_t{1} << 12);
  at_most("num_heads", num_heads, int64_t{1} << 12);
  at_most("num_kv_heads", num_kv_heads, int64_t{1} << 12);
  at_most("head_dim", head_dim, int64_t{1} << 16);
  at_most("intermediate_size", intermediate_size, int64_t{1} << 22);
  at_most("max_position_embeddings", max_position_embeddings, int64_t{1} << 30);
  if (num_heads % num_kv_heads != 0)
    fail("num_heads (" + std::to_string(num_heads) + ") must be a multiple of num_kv_heads (" +
         std::to_string(num_kv_heads) + ")");
  if (positions == PositionType::Rotary && head_dim % 2 != 0)
    fail("head_dim must be even for rotary positions, got " + std::to_string(head_dim));
  if (!(norm_eps > 0)) fail("norm_eps must be positive");
  if (positions == PositionType::Rotary && !(rope_theta > 0)) fail("rope_theta must be positive");
  auto id_ok = [&](const char* name, int64_t id) {
    if (id < -1 || id >= vocab_size)
      fail(std::string(name) + " " + std::to_string(id) + " is outside the vocabulary (size " +
           std::to_string(vocab_size) + ")");
  };
  id_ok("bos_token_id", bos_token_id);
  id_ok("pad_token_id", pad_token_id);
  for (int64_t e : eos_token_ids) id_ok("eos_token_id", e);

  // Each architecture fixes the layout choices; anything else could not be written as that
  // class's config.json and read back the same.
  bool llama_family = norm == NormType::RMSNorm && mlp == MlpType::SwiGLU && positions == PositionType::Rotary;
  if (is_gpt2(architecture)) {
    if (norm != NormType::LayerNorm || mlp != MlpType::GELU || positions != PositionType::Learned ||
        !attention_bias || !attention_out_bias || !mlp_bias)
      fail("GPT2LMHeadModel needs LayerNorm, GELU, learned positions and all biases");
    if (num_kv_heads != num_heads || head_dim * num_heads != hidden_size)
      fail("GPT2LMHeadModel needs num_kv_heads == num_heads and head_dim * num_heads == hidden_size");
  } else {
    if (!llama_family) fail(architecture + " needs RMSNorm, SwiGLU and rotary positions");
    if (architecture == "LlamaForCausalLM" && attention_bias != attention_out_bias)
      fail("LlamaForCausalLM has biases on all of q, k, v, o or on none");
    if (architecture == "MistralForCausalLM" && (attention_bias || attention_out_bias || mlp_bias))
      fail("MistralForCausalLM has no biases");
    if (architecture == "Qwen2ForCausalLM" && (!attention_bias || attention_out_bias || mlp_bias))
      fail("Qwen2ForCausalLM has biases on q, k, v only");
  }
}

int64_t ModelConfig::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, shape] : canonical_shapes(*this)) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    n += numel;
  }
  return n;
}

TensorShapes canonical_shapes(const ModelConfig& c) {
  const int64_t C = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
  const bool ln = c.norm == NormType::LayerNorm;
  TensorShapes s;
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
    s[name + ".weight"] = {out, in};
    if (bias) s[name + ".bias"] = {out};
  };
  auto norm = [&](const std::string& name) {
    s[name + ".weight"] = {C};
    if (ln) s[name + ".bias"] = {C};
  };
  s["model.embed_tokens.weight"] = {V, C};
  if (c.positions == PositionType::Learned) s["model.embed_positions.weight"] = {c.max_position_embeddings, C};
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    norm(p + "input_layernorm");
    linear(p + "self_attn.q_proj", q_out, C, c.attention_bias);
    linear(p + "self_attn.k_proj", kv_out, C, c.attention_bias);
    linear(p + "self_attn.v_proj", kv_out, C, c.attention_bias);
    linear(p + "self_attn.o_proj", C, q_out, c.attention_out_bias);
    norm(p + "post_attention_layernorm");
    if (c.mlp == MlpType::SwiGLU) linear(p + "mlp.gate_proj", I, C, c.mlp_bias);
    linear(p + "mlp.up_proj", I, C, c.mlp_bias);
    linear(p + "mlp.down_proj", C, I, c.mlp_bias);
  }
  norm("model.norm");
  if (c.num_labels > 0) s["score.weight"] = {c.num_labels, C};
  else if (!c.tie_word_embeddings) s["lm_head.weight"] = {V, C};
  return s;
}

}  // namespace rlhf
