// A small set of training files on stories260K's vocabulary for the trainer-option tests
// (precision, checkpointing, LoRA): sft.jsonl, prefs.jsonl and prompts.jsonl in a folder.
#pragma once
#include <nlohmann/json.hpp>

#include <random>
#include <string>
#include <vector>

#include "core/io.h"
#include "test_util.h"

namespace rlhf::test {

inline std::string random_words(std::mt19937_64& rng, int n) {
  static const std::vector<std::string> words{"the", "dog", "ran",   "to",     "a",    "big", "tree",
                                              "and", "saw", "Lily",  "ball",   "red",  "park", "cat",
                                              "jumped", "over", "mom", "said", "hello"};
  std::string s;
  for (int k = 0; k < n; ++k) s += " " + words[rng() % words.size()];
  return s;
}

// 16 SFT rows, 16 preference pairs (chosen says "happy", rejected "sad"), 4 prompts; seeded.
inline void write_small_training_data(const TempDir& tmp) {
  using json = nlohmann::json;
  std::mt19937_64 rng(5);
  std::string sft, prefs, prompts;
  for (int i = 0; i < 16; ++i) {
    sft += json{{"prompt", "Once upon a time" + random_words(rng, 3)}, {"completion", random_words(rng, 10) + "."}}.dump() + "\n";
    const auto a = random_words(rng, 5), b = random_words(rng, 4);
    prefs += json{{"prompt", "Once upon a time"}, {"chosen", a + " happy" + b + "."}, {"rejected", a + " sad" + b + "."}}.dump() + "\n";
  }
  for (const char* p : {"Once upon a time", "The cat", "Tom and his dog", "There was a big"})
    prompts += json{{"prompt", p}}.dump() + "\n";
  write_file_atomic(tmp / "sft.jsonl", sft);
  write_file_atomic(tmp / "prefs.jsonl", prefs);
  write_file_atomic(tmp / "prompts.jsonl", prompts);
}

}  // namespace rlhf::test
