// SentencePiece-style BPE with byte fallback (Llama-2, llama2.c, GGUF "llama" vocabularies),
// encoding as llama.cpp's SPM tokenizer does, plus the llama2.c tokenizer file reader.
#include <algorithm>
#include <array>
#include <cstring>
#include <optional>

#include "core/error.h"
#include "core/io.h"
#include "tokenizer/bpe_common.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab_export.h"
#include "core/utf8.h"

namespace rlhf {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// "<0xNN>" -> NN; anything else -> -1.
int byte_piece_value(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  for (size_t hit; (hit = s.find(from, i)) != std::string_view::npos; i = hit + from.size()) {
    out.append(s.substr(i, hit - i));
    out.append(to);
  }
  out.append(s.substr(i));
  return out;
}

class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer(SpmVocab v, std::string source);

  std::vector<int32_t> encode(const std::string& text, const EncodeOptions& opt) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string token_bytes(int32_t id) const override;
  bool strips_leading_space() const override { return v_.add_dummy_prefix; }
  int64_t vocab_size() const override { return static_cast<int64_t>(v_.pieces.size()); }
  std::string token_text(int32_t id) const override { return v_.pieces.at(checked(id)); }
  int32_t token_id(const std::string& text) const override { return find(text); }
  bool is_special(int32_t id) const override {
    const TokenType t = v_.types.at(checked(id));
    return t == TokenType::Control || t == TokenType::Unknown;
  }
  nlohmann::json to_hf_json() const override;
  std::string hf_tokenizer_class() const override { return "LlamaTokenizerFast"; }
  const SpmVocab& vocab() const { return v_; }

 private:
  int32_t find(std::string_view piece) const {
    auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }
  size_t checked(int32_t id) const {
    check(id >= 0 && id < vocab_size(), source_ + ": token id " + std::to_string(id) +
                                            " out of range [0, " + std::to_string(vocab_size()) + ")");
    return static_cast<size_t>(id);
  }
  std::optional<double> rank(std::string_view left, std::string_view right) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  std::vector<std::pair<std::string, std::string>> merges_from_scores() const;

  SpmVocab v_;
  std::string source_;
  bpe::StringMap<int32_t> piece_to_id_;
  std::unordered_map<uint64_t, int32_t> merge_rank_;  // HF mode: (left id, right id) -> rank
  std::array<int32_t, 256> byte_id_;                  // the <0xNN> piece of each byte, or -1
  bpe::SpecialSplitter specials_;
};

SpmTokenizer::SpmTokenizer(SpmVocab v, std::string source) : v_(std::move(v)), source_(std::move(source)) {
  const size_t n = v_.pieces.size();
  check(n > 0, source_ + ": empty vocabulary");
  const bool by_rank = !v_.merges.empty();
  check(v_.scores.size() == n || (by_rank && v_.scores.empty()),
        source_ + ": " + std::to_string(v_.scores.size()) + " scores for " + std::to_string(n) + " pieces");
  check(v_.types.empty() || v_.types.size() == n,
        source_ + ": " + std::to_string(v_.types.size()) + " token types for " + std::to_string(n) + " pieces");
  for (auto [name, id] : {std::pair{"bos", v_.bos_id}, {"eos", v_.eos_id}, {"unk", v_.unk_id}, {"pad", v_.pad_id}})
    check(id >= -1 && id < static_cast<int64_t>(n),
          source_ + ": " + name + " id " + std::to_string(id) + " out of range for " + std::to_string(n) + " pieces");

  if (v_.types.empty()) {
    v_.types.assign(n, TokenType::Normal);
    for (size_t i = 0; i < n; ++i) {
      const auto id = static_cast<int32_t>(i);
      if (byte_piece_value(v_.pieces[i]) >= 0) v_.types[i] = TokenType::Byte;
      if (id == v_.bos_id || id == v_.eos_id || id == v_.pad_id) v_.types[i] = TokenType::Control;
      if (id == v_.unk_id) v_.types[i] = TokenType::Unknown;
    }
  }
  byte_id_.fill(-1);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    piece_to_id_.try_emplace(v_.pieces[i], id);  // a duplicate piece keeps its first id
    const TokenType t = v_.types[i];
    if (t == TokenType::Byte) {
      const int b = byte_piece_value(v_.pieces[i]);
      check(b >= 0, source_ + ": byte token " + std::to_string(i) + " is '" + v_.pieces[i] + "', expected <0xNN>");
      if (byte_id_[b] < 0) byte_id_[b] = id;
    }
    if (t == TokenType::Control || t == TokenType::Unknown) specials_.add(v_.pieces[i], id, false);
    if (t == TokenType::UserDefined) specials_.add(v_.pieces[i], id, true);
  }

  if (by_rank) {
    for (size_t r = 0; r < v_.merges.size(); ++r) {
      const auto& [a, b] = v_.merges[r];
      const int32_t ia = find(a), ib = find(b), iab = find(a + b);
      check(ia >= 0 && ib >= 0 && iab >= 0, source_ + ": merge " + std::to_string(r) + " '" + a + " " + b +
                                                "' uses a piece that is not in the vocabulary");
      merge_rank_.try_emplace(bpe::pair_key(ia, ib), static_cast<int32_t>(r));
    }
    if (v_.scores.empty()) {
      // Scores consistent with the ranks, for writers of score-based formats (GGUF):
      // a piece scores by the first merge that makes it.
      v_.scores.assign(n, -static_cast<float>(v_.merges.size()));
      for (size_t r = v_.merges.size(); r-- > 0;)
        v_.scores[find(v_.merges[r].first + v_.merges[r].second)] = -static_cast<float>(r);
    }
  }
  set_bos_id(v_.bos_id);
  set_eos_id(v_.eos_id);
  set_pad_id(v_.pad_id);
  set_add_bos_default(v_.add_bos && v_.bos_id >= 0);
}

std::optional<double> SpmTokenizer::rank(std::string_view left, std::string_view right) const {
  const int32_t il = find(left), ir = find(right);
  if (il < 0 || ir < 0) return std::nullopt;
  if (!merge_rank_.empty()) {
    auto it = merge_rank_.find(bpe::pair_key(il, ir));
    if (it == merge_rank_.end()) return std::nullopt;
    return it->second;
  }
  // bpe::merge hands over neighbours in one buffer, so the merged piece is one view.
  const int32_t id = find(std::string_view(left.data(), left.size() + right.size()));
  if (id < 0 || v_.types[id] != TokenType::Normal) return std::nullopt;
  return -static_cast<double>(v_.scores[id]);
}

void SpmTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string s = v_.add_dummy_prefix ? std::string(kSpace) : std::string();
  s += replace_all(text, " ", kSpace);
  // One symbol per character; an invalid byte is a symbol of its own (it falls back to its
  // byte token below, so even invalid UTF-8 round-trips).
  std::vector<uint32_t> starts;
  for (size_t i = 0; i < s.size();) {
    starts.push_back(static_cast<uint32_t>(i));
    const auto st = utf8::step(s, i);
    i += st.step == utf8::Step::Ok ? st.len : 1;
  }
  bool last_was_unk = false;
  for (std::string_view piece : bpe::merge(s, starts, [this](auto l, auto r) { return rank(l, r); })) {
    if (const int32_t id = find(piece); id >= 0) {
      out.push_back(id);
      last_was_unk = false;
      continue;
    }
    // Byte fallback: all bytes of the character, or one <unk> when a byte piece is missing
    // (consecutive unknowns fuse, as HF's fuse_unk does).
    bool all_bytes = true;
    for (char c : piece) all_bytes = all_bytes && byte_id_[static_cast<unsigned char>(c)] >= 0;
    if (all_bytes) {
      for (char c : piece) out.push_back(byte_id_[static_cast<unsigned char>(c)]);
      last_was_unk = false;
    } else if (!last_was_unk) {
      check(v_.unk_id >= 0, source_ + ": text has a character outside the vocabulary and there is no <unk> token");
      out.push_back(v_.unk_id);
      last_was_unk = true;
    }
  }
}

std::vector<int32_t> SpmTokenizer::encode(const std::string& text, const EncodeOptions& opt) const {
  std::vector<int32_t> out;
  if (opt.add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
  for (const auto& frag : specials_.split(text, opt.parse_special)) {
    if (frag.id >= 0)
      out.push_back(frag.id);
    else
      encode_text(frag.text, out);
  }
  if (opt.add_eos && v_.eos_id >= 0) out.push_back(v_.eos_id);
  return out;
}

std::string SpmTokenizer::token_bytes(int32_t id) const {
  const size_t i = checked(id);
  switch (v_.types[i]) {
    case TokenType::Byte: return std::string(1, static_cast<char>(byte_piece_value(v_.pieces[i])));
    case TokenType::Control:
    case TokenType::Unknown: return v_.pieces[i];
    default: return replace_all(v_.pieces[i], kSpace, " ");
  }
}

std::string SpmTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    out += token_bytes(id);
  }
  // The dummy prefix added on encode: HF's Strip decoder (and llama2.c after BOS) drop it.
  if (v_.add_dummy_prefix && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

// Merges from the scores as HF's SentencePieceExtractor derives them: every split of a piece
// into two pieces, the pieces in id order and the splits of one piece by (left id, right id),
// then stably sorted by the merged piece's score, best first.
std::vector<std::pair<std::string, std::string>> SpmTokenizer::merges_from_scores() const {
  struct Merge {
    std::string left, right;
    float score;
    int32_t il, ir;
  };
  std::vector<Merge> all;
  for (size_t id = 0; id < v_.pieces.size(); ++id) {
    if (v_.types[id] != TokenType::Normal || find(v_.pieces[id]) != static_cast<int32_t>(id)) continue;
    const std::string& p = v_.pieces[id];
    std::vector<Merge> local;
    for (size_t k = utf8::step(p, 0).len; k < p.size(); k += utf8::step(p, k).len) {
      const int32_t il = find(std::string_view(p).substr(0, k)), ir = find(std::string_view(p).substr(k));
      if (il >= 0 && ir >= 0) local.push_back({p.substr(0, k), p.substr(k), v_.scores[id], il, ir});
    }
    std::sort(local.begin(), local.end(),
              [](const Merge& a, const Merge& b) { return std::pair(a.il, a.ir) < std::pair(b.il, b.ir); });
    all.insert(all.end(), local.begin(), local.end());
  }
  std::stable_sort(all.begin(), all.end(), [](const Merge& a, const Merge& b) { return a.score > b.score; });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(all.size());
  for (auto& m : all) out.emplace_back(std::move(m.left), std::move(m.right));
  return out;
}

nlohmann::json SpmTokenizer::to_hf_json() const {
  using nlohmann::json;
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < v_.pieces.size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    if (!vocab.contains(v_.pieces[i])) vocab[v_.pieces[i]] = id;
    const TokenType t = v_.types[i];
    if (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::UserDefined)
      added.push_back(bpe::hf_added_token(id, v_.pieces[i], t != TokenType::UserDefined));
  }
  json replace_space = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", std::string(kSpace)}};
  json normalizer = v_.add_dummy_prefix
                        ? json{{"type", "Sequence"},
                               {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", std::string(kSpace)}},
                                                            replace_space})}}
                        : replace_space;
  json decoders = json::array({{{"type", "Replace"}, {"pattern", {{"String", std::string(kSpace)}}}, {"content", " "}},
                               {{"type", "ByteFallback"}},
                               {{"type", "Fuse"}}});
  if (v_.add_dummy_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  const bool bos = v_.add_bos && v_.bos_id >= 0;
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", normalizer},
          {"pre_tokenizer", nullptr},
          {"post_processor", bos ? bpe::hf_bos_template(v_.pieces[v_.bos_id], v_.bos_id) : json(nullptr)},
          {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", v_.unk_id >= 0 ? json(v_.pieces[v_.unk_id]) : json(nullptr)},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", bpe::hf_merges(v_.merges.empty() ? merges_from_scores() : v_.merges)}}}};
}

}  // namespace

const SpmVocab* spm_vocab_of(const Tokenizer& tok) {
  const auto* spm = dynamic_cast<const SpmTokenizer*>(&tok);
  return spm ? &spm->vocab() : nullptr;
}

std::unique_ptr<Tokenizer> make_spm_tokenizer(SpmVocab vocab, const std::string& source) {
  return std::make_unique<SpmTokenizer>(std::move(vocab), source);
}

SpmVocab read_llama2c_tokenizer(const std::filesystem::path& path) {
  const std::string data = read_file(path);
  const std::string where = path.string();
  size_t off = 0;
  auto read = [&](void* dst, size_t n, const std::string& what) {
    check(off + n <= data.size(), where + ": truncated llama2.c tokenizer: " + what + " needs bytes " +
                                      std::to_string(off) + ".." + std::to_string(off + n) + " but the file has " +
                                      std::to_string(data.size()));
    std::memcpy(dst, data.data() + off, n);
    off += n;
  };
  int32_t max_len = 0;
  read(&max_len, 4, "the header");
  check(max_len > 0 && max_len < (1 << 16), where + ": bad max_token_length " + std::to_string(max_len) +
                                                " (not a llama2.c tokenizer?)");
  SpmVocab v;
  while (off < data.size()) {
    const std::string what = "token " + std::to_string(v.pieces.size());
    float score;
    int32_t len;
    read(&score, 4, what);
    read(&len, 4, what);
    check(len >= 0 && len <= max_len, where + ": " + what + " has length " + std::to_string(len) +
                                          ", outside [0, max_token_length=" + std::to_string(max_len) + "]");
    std::string piece(static_cast<size_t>(len), '\0');
    read(piece.data(), piece.size(), what);
    v.pieces.push_back(replace_all(piece, " ", kSpace));
    v.scores.push_back(score);
  }
  check(v.pieces.size() > 2, where + ": llama2.c tokenizer with only " + std::to_string(v.pieces.size()) + " tokens");
  // llama2.c's tokenizer.py writes BOS/EOS with newlines around them for printing; the
  // SentencePiece names are what other formats expect.
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  if (v.pieces[1] == "\n<s>\n") v.pieces[1] = "<s>";
  if (v.pieces[2] == "\n</s>\n") v.pieces[2] = "</s>";
  v.add_dummy_prefix = true;
  v.add_bos = true;
  return v;
}

}  // namespace rlhf
