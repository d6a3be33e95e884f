// One declaration per config field feeds everything: TOML parsing, command-line flags,
// `--help`, and the resolved copy saved in each run directory and checkpoint. A config struct
// lists its fields once in `template <class V> void visit(V& v)`:
//     v("lr", lr, "Peak learning rate");
// and the visitors below do the rest.
#pragma once
#include <CLI/CLI.hpp>

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <sstream>
#include <string>

#include "core/error.h"

namespace rlhf {

// Reads the fields of `cfg` from a TOML file; a key the config does not have, or a value of
// the wrong type, is an Error naming the file and key.
template <class Config>
void load_toml(Config& cfg, const std::filesystem::path& path);

// The resolved config as TOML text (every field, with its help as a comment).
template <class Config>
std::string to_toml(Config& cfg);

// Adds `config_option` (e.g. "--config,-c", or "config" for a positional file) that loads a TOML
// file, then one `--name` option per field (underscores become dashes; a nested field is
// `--rm.lr`); flags given on the command line override the file. String values, from the file
// or a flag, that start with "data:" or "${RLHF_DATA}" name files in the data folder
// (core/paths.h).
template <class Config>
void add_config_options(CLI::App& cmd, Config& cfg, std::string& config_path,
                        const std::string& config_option = "--config,-c");

// Visits the fields of a stage's config `stage` as "prefix.name" (a [prefix] table in TOML),
// leaving out those the composite command sets itself (`owned`). This is how a composite
// config (the pipeline's [rm] and [ppo]) takes its stages' settings, declared once in the
// stages, with the stages' defaults.
template <class Stage, class V>
void visit_stage(Stage& stage, const std::string& prefix, const std::set<std::string>& owned, V&& v) {
  stage.visit([&](const std::string& name, auto& field, const char* help) {
    if (!owned.contains(name)) v(prefix + "." + name, field, help);
  });
}

// ---- implementation ------------------------------------------------------------------
namespace detail {
std::string toml_quote(const std::string& s);
CLI::Validator data_path_flag();  // expands data-folder paths (core/paths.h) in a flag's value
std::string dashed(const std::string& name);
struct TomlDoc;  // parsed file, opaque (toml++ stays out of the headers)
std::shared_ptr<TomlDoc> parse_toml_file(const std::filesystem::path& path);
void toml_get(const TomlDoc& doc, const std::string& key, int64_t& out);
void toml_get(const TomlDoc& doc, const std::string& key, double& out);
void toml_get(const TomlDoc& doc, const std::string& key, bool& out);
void toml_get(const TomlDoc& doc, const std::string& key, std::string& out);
bool toml_has(const TomlDoc& doc, const std::string& key);
std::set<std::string> toml_keys(const TomlDoc& doc);
const std::string& toml_source(const TomlDoc& doc);

template <class T>
std::string toml_value(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return toml_quote(v);
  else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];  // the shortest text that reads back as the same double
    auto s = std::string(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep TOML's float type
    return s;
  } else return std::to_string(v);
}
}  // namespace detail

template <class Config>
void load_toml(Config& cfg, const std::filesystem::path& path) {
  auto doc = detail::parse_toml_file(path);
  std::set<std::string> known;
  cfg.visit([&](const std::string& name, auto& field, const char*) {
    known.insert(name);
    if (detail::toml_has(*doc, name)) detail::toml_get(*doc, name, field);
  });
  for (const auto& key : detail::toml_keys(*doc))
    check(known.contains(key), detail::toml_source(*doc) + ": unknown key '" + key + "' (see --help for the fields)");
}

template <class Config>
std::string to_toml(Config& cfg) {
  std::string out;
  cfg.visit([&](const std::string& name, auto& field, const char* help) {
    out += "# " + std::string(help) + "\n" + name + " = " + detail::toml_value(field) + "\n";
  });
  return out;
}

template <class Config>
void add_config_options(CLI::App& cmd, Config& cfg, std::string& config_path, const std::string& config_option) {
  // The config file is parsed first (CLI11 runs option callbacks in order of declaration), so
  // the flags that follow override what the file says.
  cmd.add_option_function<std::string>(
         config_option, [&cfg, &config_path](const std::string& p) { config_path = p; load_toml(cfg, p); },
         "TOML file with any of the fields below")
      ->trigger_on_parse();
  cfg.visit([&](const std::string& name, auto& field, const char* help) {
    using T = std::decay_t<decltype(field)>;
    auto* opt = cmd.add_option("--" + detail::dashed(name), field, help)->capture_default_str();
    if constexpr (std::is_same_v<T, bool>) opt->expected(0, 1)->default_str(field ? "true" : "false");
    if constexpr (std::is_same_v<T, std::string>) opt->transform(detail::data_path_flag());
  });
}

}  // namespace rlhf
