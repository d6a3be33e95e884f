// Facts about a model that its files carry beside the weights, read without loading it.
#pragma once
#include <filesystem>
#include <string>

namespace rlhf {

// The model's own chat template (Jinja text) where its files carry one: a Hugging Face
// folder's tokenizer_config.json ("chat_template", or the "default" entry of a list of named
// templates), a GGUF file's tokenizer.chat_template. "" otherwise.
std::string read_chat_template(const std::filesystem::path& model_path);

// A string metadata value of a GGUF file; `fallback` when the key is absent. formats/gguf.cpp
std::string read_gguf_string(const std::filesystem::path& path, const std::string& key, const std::string& fallback = "");

}  // namespace rlhf
