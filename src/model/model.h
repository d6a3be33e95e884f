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
};

struct LoadedModel {
  ModelConfig config;
  Transformer model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;  // null when none was found
};

// Reads any supported format (HF folder, .gguf, llama2.c .bin) into an eval-mode model.
LoadedModel load_model(const std::filesystem::path& path, const LoadOptions& options = {});

torch::Device parse_device(const std::string& name);  // Error for unknown / unavailable
torch::Dtype parse_dtype(const std::string& name);    // Error for unsupported names

}  // namespace rlhf
