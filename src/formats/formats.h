// Reading and writing model files. Each reader returns the config, the weights under their
// canonical names (see tensor_map.h; float tensors on the CPU, dequantized), and the
// tokenizer when the source carries one. Every problem is an rlhf::Error naming the file and
// what is wrong (truncated, bad magic, unknown architecture, tensor of the wrong shape...).
#pragma once
#include <filesystem>
#include <memory>
#include <string>

#include "kernels/packed_linear.h"
#include "model/config.h"
#include "model/tensor_map.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {

struct ModelFiles {
  ModelConfig config;
  TensorMap weights;                      // canonical names, CPU, float32 (or bf16 as stored)
  std::unique_ptr<Tokenizer> tokenizer;   // null when the source has none
  // Matrices kept as stored (read_gguf with keep_stored: Q8_0 blocks), by canonical name;
  // these names are then absent from `weights`.
  std::map<std::string, PackedWeight> packed;
};

// GGUF v2/v3 (F32, F16, BF16, Q8_0 tensors; tokenizer from the metadata). formats/gguf.cpp
// keep_stored: Q8_0 matrices go to `packed` as they are and BF16 tensors stay bf16, for a
// packed inference model (no float32 copy of the model is made).
ModelFiles read_gguf(const std::filesystem::path& path, bool keep_stored = false);
// llama2.c checkpoint (.bin, legacy v0 header). Tokenizer: `tokenizer_path` when given, else
// a sibling tokenizer.bin / tok<N>.bin whose size matches the vocabulary. formats/llama2c.cpp
ModelFiles read_llama2c(const std::filesystem::path& path,
                        const std::filesystem::path& tokenizer_path = {});
// Hugging Face folder: config.json, model.safetensors or sharded *.safetensors with
// model.safetensors.index.json, tokenizer.json (+ tokenizer_config.json). formats/hf.cpp
ModelFiles read_hf_dir(const std::filesystem::path& dir);
// Writes the Hugging Face layout (config.json, model.safetensors, tokenizer.json,
// tokenizer_config.json, generation_config.json) into `dir`, each file atomically.
void write_hf_dir(const std::filesystem::path& dir, const ModelConfig& config,
                  const TensorMap& weights, const Tokenizer* tokenizer);

// Picks the reader by what `path` is: a folder -> HF, *.gguf -> GGUF, *.bin -> llama2.c.
// keep_stored: passed to read_gguf (other formats ignore it).
ModelFiles read_model_files(const std::filesystem::path& path,
                            const std::filesystem::path& tokenizer_path = {}, bool keep_stored = false);

// Checks that `weights` holds exactly the tensors `config` needs, with the right shapes;
// throws Error("<source>: tensor <name> has shape [..], expected [..]") otherwise.
void validate_weights(const ModelConfig& config, const TensorMap& weights, const std::string& source);

}  // namespace rlhf
