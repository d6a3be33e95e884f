// PEFT's LoRA adapter folder, as peft's save_pretrained writes it and from_pretrained reads it:
//   adapter_config.json         {peft_type: "LORA", task_type, r, lora_alpha, lora_dropout,
//                                target_modules, modules_to_save, bias: "none", ...}
//   adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in) and
//                               .lora_B.weight (out, r) per adapted module, and
//                               base_model.model.<module>.<param> of modules_to_save
// The tensor names are those of model/lora.h (lora_weights); this file only moves them.
#pragma once
#include <filesystem>
#include <string>

#include "model/lora.h"
#include "model/tensor_map.h"

namespace rlhf {

struct PeftAdapter {
  LoraConfig config;
  std::string task_type;  // CAUSAL_LM (a language model) or SEQ_CLS (a reward or value model)
  TensorMap weights;      // PEFT names, CPU
};

// Writes the folder (each file atomically); tensors are copied to the CPU as they are.
void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapter& adapter);

// Reads a LoRA adapter folder. Error naming the file for what our adapters cannot represent
// (another peft_type, DoRA, rsLoRA, per-layer ranks or alphas, a bias, fan_in_fan_out,
// target_modules as a regular expression, adapter_model.bin without safetensors).
PeftAdapter read_peft_adapter(const std::filesystem::path& dir);

}  // namespace rlhf
