#include "train/config_fields.h"

#include <toml++/toml.h>

namespace rlhf::detail {

struct TomlDoc {
  toml::table table;
  std::string source;
};

std::string toml_quote(const std::string& s) {
  std::ostringstream ss;
  ss << toml::value<std::string>(s);
  return ss.str();
}

std::string dashed(const std::string& name) {
  std::string s = name;
  std::replace(s.begin(), s.end(), '_', '-');
  return s;
}

std::shared_ptr<TomlDoc> parse_toml_file(const std::filesystem::path& path) {
  check(std::filesystem::exists(path), path.string() + ": config file not found");
  auto doc = std::make_shared<TomlDoc>();
  doc->source = path.string();
  try {
    doc->table = toml::parse_file(path.string());
  } catch (const toml::parse_error& e) {
    throw Error(path.string() + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description()));
  }
  return doc;
}

bool toml_has(const TomlDoc& doc, const std::string& key) { return doc.table.contains(key); }

std::set<std::string> toml_keys(const TomlDoc& doc) {
  std::set<std::string> keys;
  for (const auto& [k, v] : doc.table) keys.insert(std::string(k.str()));
  return keys;
}

const std::string& toml_source(const TomlDoc& doc) { return doc.source; }

namespace {
[[noreturn]] void wrong_type(const TomlDoc& doc, const std::string& key, const char* expected) {
  throw Error(doc.source + ": '" + key + "' must be " + expected);
}
}  // namespace

void toml_get(const TomlDoc& doc, const std::string& key, int64_t& out) {
  auto v = doc.table[key].value<int64_t>();
  if (!v || !doc.table[key].is_integer()) wrong_type(doc, key, "an integer");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, double& out) {
  auto v = doc.table[key].value<double>();  // integers are accepted for floats
  if (!v) wrong_type(doc, key, "a number");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, bool& out) {
  auto v = doc.table[key].value<bool>();
  if (!v) wrong_type(doc, key, "true or false");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, std::string& out) {
  auto v = doc.table[key].value<std::string>();
  if (!v) wrong_type(doc, key, "a string");
  out = *v;
}

}  // namespace rlhf::detail
