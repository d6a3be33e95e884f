// Reading constitution files (TOML). The default constitution is constitutions/default.toml,
// compiled in (cmake/embed_text.cmake), and parsed by the same code as any other file.
#include "feedback/constitution.h"

#include <toml++/toml.h>

#include <algorithm>
#include <set>
#include <string_view>

#include "core/error.h"
#include "core/io.h"

namespace rlhf {

extern const std::string_view kDefaultConstitutionToml;  // generated from constitutions/default.toml

namespace {

// Errors read "FILE:LINE: 'principles[2].critique' must be ..." (the line when toml++ knows it).
struct Reader {
  std::string source;

  [[noreturn]] void fail(const toml::node* at, const std::string& message) const {
    std::string where = source;
    if (at && at->source().begin.line > 0) where.append(":").append(std::to_string(at->source().begin.line));
    throw Error(where + ": " + message);
  }

  void only_keys(const toml::table& t, const std::string& prefix, const std::set<std::string>& known) const {
    for (const auto& [key, value] : t)
      if (!known.contains(std::string(key.str()))) {
        std::string names;
        for (const auto& k : known) names += (names.empty() ? "" : ", ") + k;
        fail(&value, "unknown key '" + prefix + std::string(key.str()) + "' (expected one of: " + names + ")");
      }
  }

  // A non-empty string at t[key]; `required` false: `out` is kept when the key is absent.
  void text(const toml::table& t, const std::string& prefix, const std::string& key, std::string& out,
            bool required) const {
    const toml::node* node = t.get(key);
    if (!node) {
      if (required) fail(&t, "'" + prefix + key + "' is missing");
      return;
    }
    const auto* s = node->as_string();
    if (!s) fail(node, "'" + prefix + key + "' must be a string");
    if (s->get().find_first_not_of(" \t\r\n") == std::string::npos) fail(node, "'" + prefix + key + "' is empty");
    out = s->get();
  }

  const toml::array* array_of_tables(const toml::table& root, const std::string& key) const {
    const toml::node* node = root.get(key);
    if (!node) return nullptr;
    const auto* a = node->as_array();
    if (!a || !a->is_array_of_tables())
      fail(node, "'" + key + "' must be an array of tables ([[" + key + "]] sections)");
    return a;
  }

  void placeholders(const toml::table& t, const std::string& key, const std::string& tmpl,
                    const std::vector<std::string>& names) const {
    for (const auto& name : names)
      if (tmpl.find("{" + name + "}") == std::string::npos)
        fail(t.get(key), "'templates." + key + "' lacks the placeholder {" + name + "}");
  }
};

Constitution parse_constitution(const std::string& text, const std::string& source) {
  Reader r{source};
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    throw Error(source + ":" + std::to_string(e.source().begin.line) + ": " + std::string(e.description()));
  }
  r.only_keys(root, "", {"name", "templates", "principles", "comparisons", "examples"});

  Constitution c;
  c.source = source;
  c.name = std::filesystem::path(source).stem().string();
  r.text(root, "", "name", c.name, false);

  if (const toml::node* node = root.get("templates")) {
    const auto* t = node->as_table();
    if (!t) r.fail(node, "'templates' must be a table ([templates])");
    r.only_keys(*t, "templates.", {"conversation", "critique", "revision", "comparison", "answer_cue", "cot_cue", "stop"});
    r.text(*t, "templates.", "conversation", c.conversation, false);
    r.text(*t, "templates.", "critique", c.critique, false);
    r.text(*t, "templates.", "revision", c.revision, false);
    r.text(*t, "templates.", "comparison", c.comparison, false);
    r.text(*t, "templates.", "answer_cue", c.answer_cue, false);
    r.text(*t, "templates.", "cot_cue", c.cot_cue, false);
    if (const toml::node* stop = t->get("stop")) {
      const auto* a = stop->as_array();
      if (!a) r.fail(stop, "'templates.stop' must be an array of strings");
      c.stop.clear();
      for (const auto& s : *a) {
        if (!s.is_string() || s.as_string()->get().empty())
          r.fail(&s, "'templates.stop' must hold non-empty strings");
        c.stop.push_back(s.as_string()->get());
      }
    }
    r.placeholders(*t, "conversation", c.conversation, {"prompt"});
    r.placeholders(*t, "critique", c.critique, {"conversation", "response", "request"});
    r.placeholders(*t, "revision", c.revision, {"request"});
    r.placeholders(*t, "comparison", c.comparison, {"conversation", "principle", "a", "b"});
  }

  if (const auto* principles = r.array_of_tables(root, "principles"))
    for (size_t i = 0; i < principles->size(); ++i) {
      const auto& t = *(*principles)[i].as_table();
      const std::string prefix = "principles[" + std::to_string(i) + "].";
      r.only_keys(t, prefix, {"name", "critique", "revision"});
      Principle p;
      r.text(t, prefix, "name", p.name, true);
      r.text(t, prefix, "critique", p.critique, true);
      r.text(t, prefix, "revision", p.revision, true);
      for (const auto& q : c.principles)
        if (q.name == p.name) r.fail(&t, "'" + prefix + "name': \"" + p.name + "\" is used twice");
      c.principles.push_back(std::move(p));
    }

  if (const auto* comparisons = r.array_of_tables(root, "comparisons"))
    for (size_t i = 0; i < comparisons->size(); ++i) {
      const auto& t = *(*comparisons)[i].as_table();
      const std::string prefix = "comparisons[" + std::to_string(i) + "].";
      r.only_keys(t, prefix, {"text"});
      r.text(t, prefix, "text", c.comparisons.emplace_back(), true);
    }

  if (const auto* examples = r.array_of_tables(root, "examples"))
    for (size_t i = 0; i < examples->size(); ++i) {
      const auto& t = *(*examples)[i].as_table();
      const std::string prefix = "examples[" + std::to_string(i) + "].";
      r.only_keys(t, prefix, {"prompt", "response", "critique", "revision", "principle"});
      CritiqueExample e;
      r.text(t, prefix, "prompt", e.prompt, true);
      r.text(t, prefix, "response", e.response, true);
      r.text(t, prefix, "critique", e.critique, true);
      r.text(t, prefix, "revision", e.revision, true);
      r.text(t, prefix, "principle", e.principle, false);
      if (!e.principle.empty() &&
          std::none_of(c.principles.begin(), c.principles.end(), [&](const Principle& p) { return p.name == e.principle; }))
        r.fail(t.get("principle"), "'" + prefix + "principle': no principle is named \"" + e.principle + "\"");
      c.examples.push_back(std::move(e));
    }

  if (c.principles.empty() && c.comparisons.empty())
    r.fail(nullptr, "no principles and no comparisons (give at least one [[principles]] or [[comparisons]])");
  return c;
}

}  // namespace

Constitution load_constitution(const std::filesystem::path& path) {
  return parse_constitution(read_file(path), path.string());
}

Constitution default_constitution() {
  static const Constitution c = parse_constitution(std::string(kDefaultConstitutionToml), "builtin");
  return c;
}

Constitution constitution_or_default(const std::string& path) {
  return path.empty() ? default_constitution() : load_constitution(path);
}

}  // namespace rlhf
