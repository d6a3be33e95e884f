// Test helper for the Python cross-checks (tests/python): the gold score of the simulated
// labeler (SentimentLexicon::builtin().score) of each text, so a Python reimplementation
// (examples/rlaif/run.py) can be checked against the C++ one.
//   rlhf_lexicon_tool   stdin: one JSON string per line -> stdout: its score per line (%.17g)
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "feedback/labeler.h"

int main() {
  try {
    const auto lexicon = rlhf::SentimentLexicon::builtin();
    std::string line;
    for (size_t line_no = 1; std::getline(std::cin, line); ++line_no) {
      const auto in = nlohmann::json::parse(line, nullptr, false);
      rlhf::check(in.is_string(), "stdin line " + std::to_string(line_no) + ": expected a JSON string");
      std::printf("%.17g\n", lexicon.score(in.get<std::string>()));
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "rlhf_lexicon_tool: " << e.what() << '\n';
    return 1;
  }
}
