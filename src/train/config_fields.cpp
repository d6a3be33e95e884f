#include "train/config_fields.h"

#include <toml++/toml.h>

#include "core/paths.h"

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

CLI::Validator data_path_flag() {
  return CLI::Validator(
      [](std::string& value) {
        value = expand_data_path(value);
        return std::string();
      },
      "", "data path");
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

// Keys are dotted paths: "lr", or "rm.lr" for `lr` in a [rm] table (or written `rm.lr = ...`).
bool toml_has(const TomlDoc& doc, const std::string& key) { return static_cast<bool>(doc.table.at_path(key)); }

namespace {
void collect_keys(const toml::table& t, const std::string& prefix, std::set<std::string>& keys) {
  for (const auto& [k, v] : t) {
    const std::string name = prefix + std::string(k.str());
    if (const auto* sub = v.as_table()) collect_keys(*sub, name + ".", keys);
    else keys.insert(name);
  }
}
}  // namespace

std::set<std::string> toml_keys(const TomlDoc& doc) {
  std::set<std::string> keys;
  collect_keys(doc.table, "", keys);
  return keys;
}

const std::string& toml_source(const TomlDoc& doc) { return doc.source; }

namespace {
[[noreturn]] void wrong_type(const TomlDoc& doc, const std::string& key, const char* expected) {
  throw Error(doc.source + ": '" + key + "' must be " + expected);
}
}  // namespace

void toml_get(const TomlDoc& doc, const std::string& key, int64_t& out) {
  auto v = doc.table.at_path(key).value<int64_t>();
  if (!v || !doc.table.at_path(key).is_integer()) wrong_type(doc, key, "an integer");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, double& out) {
  auto v = doc.table.at_path(key).value<double>();  // integers are accepted for floats
  if (!v) wrong_type(doc, key, "a number");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, bool& out) {
  auto v = doc.table.at_path(key).value<bool>();
  if (!v) wrong_type(doc, key, "true or false");
  out = *v;
}

void toml_get(const TomlDoc& doc, const std::string& key, std::string& out) {
  auto v = doc.table.at_path(key).value<std::string>();
  if (!v) wrong_type(doc, key, "a string");
  out = expand_data_path(*v);
}

}  // namespace rlhf::detail
