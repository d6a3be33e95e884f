#include "formats/model_metadata.h"

#include <fstream>
#include <nlohmann/json.hpp>

namespace rlhf {

std::string read_chat_template(const std::filesystem::path& model_path) {
  namespace fs = std::filesystem;
  if (fs::is_regular_file(model_path) && model_path.extension() == ".gguf")
    return read_gguf_string(model_path, "tokenizer.chat_template");
  const fs::path cfg = model_path / "tokenizer_config.json";
  if (!fs::is_directory(model_path) || !fs::exists(cfg)) return "";
  std::ifstream in(cfg);
  auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("chat_template")) return "";
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())  // [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    for (const auto& e : t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
  return "";
}

}  // namespace rlhf
