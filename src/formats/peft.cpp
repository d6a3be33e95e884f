// PEFT adapter folders (adapter_config.json + adapter_model.safetensors), LoRA only.
#include "formats/peft.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "formats/safetensors.h"

namespace rlhf {

namespace fs = std::filesystem;
using json = nlohmann::json;

void write_peft_adapter(const fs::path& dir, const PeftAdapter& adapter) {
  const LoraConfig& c = adapter.config;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir.string() + ": cannot create folder (" + ec.message() + ")");
  TensorMap cpu;
  for (const auto& [name, t] : adapter.weights) cpu[name] = t.detach().to(torch::kCPU);
  write_safetensors(dir / "adapter_model.safetensors", cpu, {{"format", "pt"}});
  // The fields peft reads; the ones left out take peft's defaults, which are what we compute.
  json j = {{"peft_type", "LORA"},
            {"task_type", adapter.task_type},
            {"r", c.r},
            {"lora_alpha", c.alpha},
            {"lora_dropout", c.dropout},
            {"target_modules", c.target_modules},
            {"modules_to_save", c.modules_to_save.empty() ? json(nullptr) : json(c.modules_to_save)},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"use_rslora", false},
            {"use_dora", false},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"layers_to_transform", nullptr},
            {"layers_pattern", nullptr},
            {"rank_pattern", json::object()},
            {"alpha_pattern", json::object()},
            {"base_model_name_or_path", c.base_model.empty() ? json(nullptr) : json(c.base_model)},
            {"revision", nullptr}};
  write_file_atomic(dir / "adapter_config.json", j.dump(2) + "\n");
}

PeftAdapter read_peft_adapter(const fs::path& dir) try {
  const fs::path config_path = dir / "adapter_config.json", weights_path = dir / "adapter_model.safetensors";
  const std::string src = config_path.string();
  json j;
  try {
    j = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    throw Error(src + ": invalid JSON (" + e.what() + ")");
  }
  check(j.is_object(), src + ": not a JSON object");
  // A field's value, or `fallback` when it is absent or null.
  auto get = [&](const char* key, const json& fallback) { return j.contains(key) && !j[key].is_null() ? j[key] : fallback; };
  auto unsupported = [&](bool bad, const std::string& what) { check(!bad, src + ": " + what + " is not supported"); };

  const std::string type = get("peft_type", "").is_string() ? get("peft_type", "").get<std::string>() : "";
  check(type == "LORA", src + ": peft_type '" + type + "': only LoRA adapters (LORA) are supported");
  PeftAdapter out;
  LoraConfig& c = out.config;
  check(get("r", nullptr).is_number_integer() && j["r"].get<int64_t>() > 0, src + ": 'r' must be an integer > 0");
  c.r = j["r"].get<int64_t>();
  check(get("lora_alpha", 8).is_number(), src + ": 'lora_alpha' must be a number");
  c.alpha = get("lora_alpha", 8).get<double>();  // peft's default
  check(get("lora_dropout", 0.0).is_number(), src + ": 'lora_dropout' must be a number");
  c.dropout = get("lora_dropout", 0.0).get<double>();
  const json targets = get("target_modules", nullptr);
  if (targets.is_string()) {
    check(targets.get<std::string>() == "all-linear",
          src + ": target_modules '" + targets.get<std::string>() +
              "' is a regular expression, which is not supported; list the module names");
    c.target_modules = {"all-linear"};
  } else {
    check(targets.is_array() && !targets.empty(), src + ": 'target_modules' must list module names");
    c.target_modules.clear();
    for (const auto& t : targets) {
      check(t.is_string(), src + ": 'target_modules' must list module names");
      c.target_modules.push_back(t.get<std::string>());
    }
  }
  unsupported(get("bias", "none") != "none", "bias '" + get("bias", "none").dump() + "' (only \"none\")");
  unsupported(get("fan_in_fan_out", false) != false, "fan_in_fan_out (GPT-2's Conv1D layout)");
  unsupported(get("use_dora", false) != false, "DoRA (use_dora)");
  unsupported(get("use_rslora", false) != false, "rsLoRA (use_rslora)");
  unsupported(get("lora_bias", false) != false, "lora_bias");
  unsupported(!get("rank_pattern", json::object()).empty(), "a per-module rank (rank_pattern)");
  unsupported(!get("alpha_pattern", json::object()).empty(), "a per-module alpha (alpha_pattern)");
  unsupported(!get("layers_to_transform", nullptr).is_null(), "adapting some layers only (layers_to_transform)");
  unsupported(!get("exclude_modules", nullptr).is_null(), "exclude_modules");
  out.task_type = get("task_type", "CAUSAL_LM").is_string() ? get("task_type", "CAUSAL_LM").get<std::string>() : "";
  check(out.task_type == "CAUSAL_LM" || out.task_type == "SEQ_CLS",
        src + ": task_type '" + out.task_type + "': expected CAUSAL_LM or SEQ_CLS");
  if (get("base_model_name_or_path", "").is_string()) c.base_model = get("base_model_name_or_path", "").get<std::string>();

  check(fs::exists(weights_path), weights_path.string() + ": missing" +
                                      (fs::exists(dir / "adapter_model.bin")
                                           ? std::string(" (only adapter_model.bin is there, a pickle: save the adapter "
                                                         "with safe_serialization=True)")
                                           : std::string()));
  out.weights = read_safetensors(weights_path);
  // modules_to_save: those whose tensors the file holds (peft lists "classifier" and "score"
  // for any sequence classifier; a model has one of them).
  for (const auto& m : get("modules_to_save", json::array())) {
    check(m.is_string(), src + ": 'modules_to_save' must list module names");
    const std::string prefix = "base_model.model." + m.get<std::string>() + ".";
    for (const auto& [name, t] : out.weights)
      if (name.starts_with(prefix)) {
        c.modules_to_save.push_back(m.get<std::string>());
        break;
      }
  }
  return out;
} catch (...) {
  rethrow_naming(dir.string());
}

}  // namespace rlhf
