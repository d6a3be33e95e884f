// Loading a ready-to-run model: the files (formats/formats.h), the module, device and dtype.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include "formats/formats.h"
#include "model/transformer.h"

namespace rlhf {

struct LoadOptions {
  std::string device = "cpu";      // "cpu", "cuda", "cuda:N"
  std::string dtype = "float32";   // "float32" or "bfloat16"
  std::filesystem::path tokenizer; // overrides the tokenizer found with the model
  // Format of the matrices (kernels/packed_linear.h): "f32" (a trainable model), "bf16" or
  // "q8_0" (packed for inference: CPU, float32 dtype), or "auto": as stored when the file
  // stores them packed (a GGUF's Q8_0 or BF16 tensors), else f32.
  std::string weights = "f32";
};

// The help line of the inference commands' --weights option.
inline constexpr const char* kWeightsHelp =
    "Weight matrices for inference: auto (as stored: a GGUF's Q8_0 or BF16 kept packed, else float32), "
    "f32, bf16 or q8_0 (quantized at load)";

struct LoadedModel {
  ModelConfig config;
  Transformer model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;  // null when none was found
};

// Reads any supported format (HF folder, .gguf, llama2.c .bin) into an eval-mode model.
LoadedModel load_model(const std::filesystem::path& path, const LoadOptions& options = {});
// load_model (float32 matrices), then a language model's LoRA adapter folder (formats/peft.h)
// attached on top: ready to run, or to merge (merged_weights, model/lora.h). Error for a
// reward model's (SEQ_CLS) adapter: its run writes the merged model itself.
LoadedModel load_model_with_adapter(const std::filesystem::path& path, const std::filesystem::path& adapter_dir,
                                    const LoadOptions& options = {});

torch::Device parse_device(const std::string& name);  // Error for unknown / unavailable
torch::Dtype parse_dtype(const std::string& name);    // Error for unsupported names

}  // namespace rlhf
