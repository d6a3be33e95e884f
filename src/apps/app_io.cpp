#include "apps/app_io.h"

#include <sstream>

#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"

namespace rlhf {

std::string fill_template(const std::string& tmpl, const std::vector<std::pair<std::string, std::string>>& values) {
  std::string out;
  // One left-to-right pass: a value that itself contains "{question}" is not expanded again.
  for (size_t i = 0; i < tmpl.size();) {
    bool replaced = false;
    if (tmpl[i] == '{')
      for (const auto& [name, value] : values)
        if (tmpl.compare(i + 1, name.size() + 1, name + "}") == 0) {
          out += value;
          i += name.size() + 2;
          replaced = true;
          break;
        }
    if (!replaced) out += tmpl[i++];
  }
  return out;
}

std::string load_template(const std::filesystem::path& path, const std::string& builtin) {
  if (path.empty()) return builtin;
  std::string text = read_file(path);
  check(text.find("{question}") != std::string::npos, path.string() + ": the template has no {question} placeholder");
  return text;
}

std::vector<nlohmann::json> read_questions(const std::filesystem::path& path) {
  std::istringstream lines(read_file(path));
  std::vector<nlohmann::json> records;
  size_t line_no = 0;
  for (std::string line; std::getline(lines, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_no);
    auto j = nlohmann::json::parse(line, nullptr, false);
    check(j.is_object(), where + ": not a JSON object");
    check(j.contains("question") && j["question"].is_string(), where + ": field 'question' must be a string");
    records.push_back(std::move(j));
  }
  check(!records.empty(), path.string() + ": no questions");
  return records;
}

void write_jsonl(const std::filesystem::path& path, const std::vector<nlohmann::json>& records) {
  write_file_atomic(path, [&](std::ostream& out) {
    for (const auto& r : records) out << dump_json(r) << "\n";  // model text may end inside a character
  });
}

}  // namespace rlhf
