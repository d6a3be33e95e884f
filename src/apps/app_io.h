// What every application command (cot, pal, rag, react) shares: prompt templates with
// {placeholders}, and batch mode's question and answer files.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace rlhf {

// `tmpl` with every "{name}" replaced by its value; the rest is kept verbatim (no escaping), so
// a model fine-tuned on one exact format is served that exact format.
std::string fill_template(const std::string& tmpl, const std::vector<std::pair<std::string, std::string>>& values);

// The template file's text, or `builtin` when `path` is empty. Error naming the file when it
// lacks "{question}".
std::string load_template(const std::filesystem::path& path, const std::string& builtin);

// Batch mode's input: JSONL, one object per line with a string `question` (blank lines skipped).
// The records come back whole so their other fields (id, ...) can be copied to the output.
std::vector<nlohmann::json> read_questions(const std::filesystem::path& path);

// One object per line, written atomically.
void write_jsonl(const std::filesystem::path& path, const std::vector<nlohmann::json>& records);

}  // namespace rlhf
