// The merge loop and special-token splitting shared by the SentencePiece-style and the
// byte-level BPE tokenizers.
#include "tokenizer/bpe_common.h"

#include <algorithm>
#include <queue>

namespace rlhf::bpe {

std::vector<std::string_view> merge(std::string_view text, const std::vector<uint32_t>& starts,
                                    const PairRank& rank) {
  struct Symbol {
    int32_t prev, next;
    uint32_t start, len;  // len == 0: merged into its left neighbour
  };
  const int32_t n = static_cast<int32_t>(starts.size());
  std::vector<Symbol> sym(n);
  for (int32_t i = 0; i < n; ++i) {
    const uint32_t end = i + 1 < n ? starts[i + 1] : static_cast<uint32_t>(text.size());
    sym[i] = {i - 1, i + 1 < n ? i + 1 : -1, starts[i], end - starts[i]};
  }
  struct Bigram {
    double rank;
    int32_t left, right;
    uint32_t len;  // combined length when queued: a different length means it went stale
  };
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(worse)> queue(worse);
  auto piece = [&](int32_t i) { return text.substr(sym[i].start, sym[i].len); };
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    if (auto rk = rank(piece(l), piece(r))) queue.push({*rk, l, r, sym[l].len + sym[r].len});
  };
  for (int32_t i = 0; i + 1 < n; ++i) try_add(i, i + 1);

  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.next != b.right || l.len + r.len != b.len) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }

  std::vector<std::string_view> out;
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) out.push_back(piece(i));
  return out;
}

void SpecialSplitter::add(const std::string& text, int32_t id, bool always) {
  if (text.empty()) return;
  entries_.push_back({text, id, always});
  auto& bucket = by_first_byte_[static_cast<unsigned char>(text[0])];
  bucket.push_back(entries_.size() - 1);
  std::stable_sort(bucket.begin(), bucket.end(), [&](size_t a, size_t b) {
    return entries_[a].text.size() > entries_[b].text.size();
  });
}

std::vector<SpecialSplitter::Fragment> SpecialSplitter::split(std::string_view text,
                                                              bool parse_special) const {
  std::vector<Fragment> out;
  size_t plain_start = 0, i = 0;
  while (i < text.size()) {
    const Entry* hit = nullptr;
    for (size_t e : by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const Entry& entry = entries_[e];
      if ((entry.always || parse_special) && text.substr(i, entry.text.size()) == entry.text) {
        hit = &entry;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > plain_start) out.push_back({-1, text.substr(plain_start, i - plain_start)});
    out.push_back({hit->id, text.substr(i, hit->text.size())});
    i += hit->text.size();
    plain_start = i;
  }
  if (plain_start < text.size()) out.push_back({-1, text.substr(plain_start)});
  return out;
}

nlohmann::json hf_added_token(int32_t id, const std::string& content, bool special) {
  return {{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},   {"normalized", false}, {"special", special}};
}

nlohmann::json hf_bos_template(const std::string& bos, int32_t bos_id) {
  using nlohmann::json;
  json special = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
  auto seq = [](const char* id, int type_id) {
    return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
  };
  return {{"type", "TemplateProcessing"},
          {"single", json::array({special, seq("A", 0)})},
          {"pair", json::array({special, seq("A", 0), special, seq("B", 1)})},
          {"special_tokens",
           {{bos, {{"id", bos}, {"ids", json::array({bos_id})}, {"tokens", json::array({bos})}}}}}};
}

nlohmann::json hf_merges(const std::vector<std::pair<std::string, std::string>>& merges) {
  const bool has_space = std::any_of(merges.begin(), merges.end(), [](const auto& m) {
    return m.first.find(' ') != std::string::npos || m.second.find(' ') != std::string::npos;
  });
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [a, b] : merges) {
    if (has_space)
      out.push_back({a, b});
    else
      out.push_back(a + " " + b);
  }
  return out;
}

}  // namespace rlhf::bpe
