// Writing GGUF (formats/gguf_writer.cpp), for llama.cpp and Ollama; read back by read_gguf.
#pragma once
#include <filesystem>
#include <string>

#include "model/config.h"
#include "model/tensor_map.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {

// The type of the file's matrices (general.file_type); norms and biases are F32 in all.
enum class GgufFileType { F32, F16, BF16, Q8_0 };
// "f32" | "f16" | "bf16" | "q8_0" (upper case too); Error for anything else.
GgufFileType parse_gguf_file_type(const std::string& name);

// A policy (canonical weights, tensor_map.h) as GGUF v3: the llama architecture for
// Llama-style models (RMSNorm, SwiGLU, rotary; q/k/v/o biases allowed, as Qwen2 has) or gpt2,
// with the tokenizer in its metadata (required: llama.cpp reads it from there). Matrices in
// `type`; under Q8_0 a matrix whose rows are not whole blocks is F16, as llama.cpp's converter
// does. Written atomically: a failure leaves any earlier file at `path` as it was. Errors for
// reward models, other architectures and missing tensors.
void write_gguf(const std::filesystem::path& path, const ModelConfig& config, const TensorMap& weights,
                const Tokenizer* tokenizer, GgufFileType type, const std::string& name = "");

}  // namespace rlhf
