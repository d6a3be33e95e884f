// Hugging Face folders: config.json + model.safetensors (or shards with an index) +
// tokenizer.json, read into canonical tensors, and written back so transformers opens them.
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/io.h"
#include "formats/formats.h"
#include "formats/layouts.h"
#include "formats/safetensors.h"

namespace rlhf {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

json read_json(const fs::path& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(path.string() + ": invalid JSON (" + e.what() + ")");
  }
}

// model.safetensors, or the shards listed by model.safetensors.index.json.
TensorMap read_hf_weights(const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors")) return read_safetensors(dir / "model.safetensors");
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json index = read_json(index_path);
    if (!index.contains("weight_map") || !index.at("weight_map").is_object())
      throw Error(index_path.string() + ": missing the 'weight_map' object");
    std::map<std::string, std::string> owner;  // tensor -> shard file
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : index.at("weight_map").items()) {
      if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos)
        throw Error(index_path.string() + ": weight_map entry for '" + tensor + "' must be a file name");
      owner[tensor] = shard.get<std::string>();
      shards.insert(shard.get<std::string>());
    }
    TensorMap all;
    for (const std::string& shard : shards) {
      if (!fs::exists(dir / shard))
        throw Error(index_path.string() + ": shard '" + shard + "' is missing from " + dir.string());
      for (auto& [name, t] : read_safetensors(dir / shard)) all[name] = std::move(t);
    }
    for (const auto& [tensor, shard] : owner)
      if (!all.count(tensor))
        throw Error(index_path.string() + ": tensor '" + tensor + "' is listed in shard '" + shard + "' but not stored there");
    return all;
  }
  for (const char* pickle : {"pytorch_model.bin", "pytorch_model.bin.index.json"})
    if (fs::exists(dir / pickle))
      throw Error((dir / pickle).string() + ": PyTorch pickle checkpoints are not supported; convert the "
                  "folder to safetensors first (in Python: AutoModelForCausalLM.from_pretrained(dir)"
                  ".save_pretrained(dir, safe_serialization=True))");
  throw Error(dir.string() + ": no model.safetensors or model.safetensors.index.json in this folder");
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: return "float32";
  }
}

}  // namespace

ModelFiles read_hf_dir(const fs::path& dir) try {
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": not a folder (expected a Hugging Face model folder)");
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) throw Error(config_path.string() + ": missing (every Hugging Face model folder has one)");
  ModelFiles out;
  out.config = ModelConfig::from_hf_json(read_json(config_path), config_path.string());
  const ModelConfig& c = out.config;

  // 1. Tensors under canonical names.
  TensorMap raw = read_hf_weights(dir);
  if (c.architecture == "GPT2LMHeadModel") {
    out.weights = gpt2_to_canonical(raw, dir.string());
  } else {
    for (auto& [name, t] : raw)
      if (!name.ends_with("rotary_emb.inv_freq"))  // a buffer older checkpoints saved, not a weight
        out.weights[name] = std::move(t);
  }
  // 2. Tied models: transformers ties whichever of the two matrices the file stores.
  TensorMap& w = out.weights;
  if (c.tie_word_embeddings && w.count("lm_head.weight")) {
    if (!w.count("model.embed_tokens.weight")) w["model.embed_tokens.weight"] = w["lm_head.weight"];
    w.erase("lm_head.weight");
  }
  // 3. Keep float32 and bf16 as stored; f16/f64 become float32 (f16 training is unstable).
  for (auto& [name, t] : w)
    if (t.scalar_type() == torch::kFloat16 || t.scalar_type() == torch::kFloat64) t = t.to(torch::kFloat32);
  validate_weights(c, w, dir.string());

  // 4. Tokenizer, when the folder has one.
  const fs::path tok_path = dir / "tokenizer.json";
  if (fs::exists(tok_path)) {
    const fs::path tc_path = dir / "tokenizer_config.json";
    json tc = fs::exists(tc_path) ? read_json(tc_path) : json(nullptr);
    out.tokenizer = tokenizer_from_hf_json(read_json(tok_path), tc, tok_path.string());
  }
  return out;
} catch (...) {
  rethrow_naming(dir.string());  // std::bad_alloc and the like name the file too
}

void write_hf_dir(const fs::path& dir, const ModelConfig& config, const TensorMap& weights,
                  const Tokenizer* tokenizer) {
  config.validate(dir.string());
  validate_weights(config, weights, dir.string());
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create folder (" + ec.message() + ")");

  // 1. Weights in the class's own names (GPT-2: transformer.* with fused Conv1D c_attn).
  TensorMap hf = config.architecture == "GPT2LMHeadModel" ? canonical_to_gpt2(weights) : weights;
  write_safetensors(dir / "model.safetensors", hf, {{"format", "pt"}});

  // 2. config.json with the weights' dtype, generation_config.json with the special ids.
  json cj = config.to_hf_json();
  const std::string dtype = dtype_name(weights.at("model.embed_tokens.weight").scalar_type());
  cj["dtype"] = dtype;
  cj["torch_dtype"] = dtype;
  write_file_atomic(dir / "config.json", cj.dump(2) + "\n");
  json gen = {{"_from_model_config", true}, {"do_sample", false}};
  gen["bos_token_id"] = cj["bos_token_id"];
  gen["eos_token_id"] = cj["eos_token_id"];
  if (config.pad_token_id >= 0) gen["pad_token_id"] = config.pad_token_id;
  write_file_atomic(dir / "generation_config.json", gen.dump(2) + "\n");

  // 3. Tokenizer files.
  if (tokenizer) {
    write_file_atomic(dir / "tokenizer.json", tokenizer->to_hf_json().dump(2) + "\n");
    write_file_atomic(dir / "tokenizer_config.json", tokenizer->hf_tokenizer_config().dump(2) + "\n");
  }
}

}  // namespace rlhf
