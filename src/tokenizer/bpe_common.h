// Internals shared by the two BPE tokenizers (not part of the public interface): the merge
// loop, the special-token splitter, string-keyed maps, and the tokenizer.json fragments both
// writers emit.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace rlhf::bpe {

// Lets unordered_map<std::string, V> be queried with a string_view without a copy.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Priority of merging two adjacent pieces: lower merges first; nullopt: never merge.
using PairRank = std::function<std::optional<double>(std::string_view left, std::string_view right)>;

// Starting from the symbols that begin at `starts` (ascending, starts[0] == 0), merges adjacent
// symbols best-ranked pair first, the leftmost one among equals, until no pair can merge. This
// is the order SentencePiece, llama.cpp and HF tokenizers all use. Returns the final pieces.
std::vector<std::string_view> merge(std::string_view text, const std::vector<uint32_t>& starts,
                                    const PairRank& rank);

// Splits text around special/added token strings (leftmost, then longest match, as HF's
// added-vocabulary matcher does). `always` tokens (user-defined) split even when special
// parsing is off.
class SpecialSplitter {
 public:
  struct Fragment {
    int32_t id;             // >= 0: this fragment is that token; -1: plain text
    std::string_view text;  // the plain text (or the matched token string)
  };
  void add(const std::string& text, int32_t id, bool always);
  std::vector<Fragment> split(std::string_view text, bool parse_special) const;

 private:
  struct Entry {
    std::string text;
    int32_t id;
    bool always;
  };
  std::vector<Entry> entries_;
  std::array<std::vector<size_t>, 256> by_first_byte_;  // indices into entries_, longest first
};

// tokenizer.json fragments.
nlohmann::json hf_added_token(int32_t id, const std::string& content, bool special);
// TemplateProcessing that puts `bos` before every sequence.
nlohmann::json hf_bos_template(const std::string& bos, int32_t bos_id);
// Merges as "a b" strings (readable by every tokenizers version) unless a piece holds a
// space, where only the newer [a, b] form is unambiguous.
nlohmann::json hf_merges(const std::vector<std::pair<std::string, std::string>>& merges);

}  // namespace rlhf::bpe
