// Byte-level BPE (GPT-2, Llama-3, Qwen2): every byte has a printable stand-in character, a
// PCRE2 regex splits the text into chunks, and each chunk is merged by rank.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "tokenizer/bpe_common.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab_export.h"
#include "core/utf8.h"

namespace rlhf {
namespace {

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The canonical pre-tokenizer name for a name or an alias (GGUF's tokenizer.ggml.pre uses
// llama.cpp's names), "" when unknown.
std::string canonical_pretokenizer(const std::string& name) {
  if (name == "gpt2" || name == "gpt-2") return "gpt2";
  if (name == "llama3" || name == "llama-bpe") return "llama3";
  if (name == "qwen2") return "qwen2";
  if (name.rfind("regex:", 0) == 0) {
    // A pattern that is one of the known ones gets its name, so writers emit the usual form.
    const std::string p = name.substr(6);
    for (const char* known : {"gpt2", "llama3", "qwen2"})
      if (p == byte_bpe_pattern(known)) return known;
    return name;
  }
  return "";
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
// bytes take the code points from U+0100 up, in byte order.
struct ByteAlphabet {
  std::array<std::string, 256> to_char;
  std::array<int16_t, 324> to_byte;  // by code point; -1: not a stand-in
  ByteAlphabet() {
    to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? b : next++;
      to_char[b] = utf8::encode(cp);
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// A compiled split pattern (Unicode classes on, JIT when available).
class SplitRegex {
 public:
  SplitRegex(const std::string& pattern, const std::string& source) {
    int err = 0;
    PCRE2_SIZE err_off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                          &err, &err_off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      throw Error(source + ": bad pre-tokenizer regex at offset " + std::to_string(err_off) + ": " +
                  reinterpret_cast<const char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // failure just means the interpreter runs
  }
  ~SplitRegex() { pcre2_code_free(code_); }
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Appends the chunks of `text` (any bytes). Runs of valid UTF-8 go through the regex, which
  // keeps both the matches and any text between them (HF's "Isolated" split). Each maximal
  // invalid subpart becomes a chunk of its own: PCRE2 must never see invalid UTF-8 under
  // PCRE2_NO_UTF_CHECK, and byte-level BPE still encodes those bytes exactly.
  void split(std::string_view text, std::vector<std::string_view>& out) const {
    size_t run = 0;
    for (size_t i = 0; i < text.size();) {
      const auto st = utf8::step(text, i);
      if (st.step == utf8::Step::Ok) {
        i += st.len;
        continue;
      }
      split_valid(text.substr(run, i - run), out);
      out.push_back(text.substr(i, st.len));
      i += st.len;
      run = i;
    }
    split_valid(text.substr(run), out);
  }

 private:
  void split_valid(std::string_view text, std::vector<std::string_view>& out) const {
    if (text.empty()) return;
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t kept = 0, search = 0;  // text before `kept` is emitted; matching resumes at `search`
    while (search < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), search, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(code_, subject, text.size(), search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        throw Error(std::string("pre-tokenizer regex failed: ") + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      if (ov[1] == ov[0]) {  // an empty match splits nothing: step over one character
        search = ov[0] + utf8::step(text, ov[0]).len;
        continue;
      }
      if (ov[0] > kept) out.push_back(text.substr(kept, ov[0] - kept));
      out.push_back(text.substr(ov[0], ov[1] - ov[0]));
      kept = search = ov[1];
    }
    if (kept < text.size()) out.push_back(text.substr(kept));
  }

  pcre2_code* code_ = nullptr;
};

class ByteBpeTokenizer final : public Tokenizer {
 public:
  ByteBpeTokenizer(ByteBpeVocab v, std::string source);

  std::vector<int32_t> encode(const std::string& text, const EncodeOptions& opt) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string token_bytes(int32_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(v_.tokens.size()); }
  std::string token_text(int32_t id) const override { return v_.tokens.at(checked(id)); }
  int32_t token_id(const std::string& text) const override { return find(text); }
  bool is_special(int32_t id) const override {
    const TokenType t = v_.types.at(checked(id));
    return t == TokenType::Control || t == TokenType::Unknown;
  }
  nlohmann::json to_hf_json() const override;
  std::string hf_tokenizer_class() const override {
    return v_.pretokenizer == "gpt2" ? "GPT2TokenizerFast" : "PreTrainedTokenizerFast";
  }
  const ByteBpeVocab& vocab() const { return v_; }

 private:
  int32_t find(std::string_view token) const {
    auto it = token_to_id_.find(token);
    return it == token_to_id_.end() ? -1 : it->second;
  }
  size_t checked(int32_t id) const {
    check(id >= 0 && id < vocab_size(), source_ + ": token id " + std::to_string(id) +
                                            " out of range [0, " + std::to_string(vocab_size()) + ")");
    return static_cast<size_t>(id);
  }
  bool is_added(size_t id) const {
    return v_.types[id] == TokenType::Control || v_.types[id] == TokenType::UserDefined;
  }
  void encode_chunk(std::string_view chunk, std::vector<int32_t>& out) const;

  ByteBpeVocab v_;
  std::string source_;
  bpe::StringMap<int32_t> token_to_id_;
  std::unordered_map<uint64_t, int32_t> merge_rank_;  // (left id, right id) -> rank
  std::unique_ptr<SplitRegex> regex_;
  bpe::SpecialSplitter specials_;
  // Chunks repeat a lot in real text (words); remembering their ids is most of the speed.
  mutable std::mutex cache_mu_;
  mutable bpe::StringMap<std::vector<int32_t>> cache_;
};

ByteBpeTokenizer::ByteBpeTokenizer(ByteBpeVocab v, std::string source)
    : v_(std::move(v)), source_(std::move(source)) {
  const size_t n = v_.tokens.size();
  check(n > 0, source_ + ": empty vocabulary");
  check(v_.types.empty() || v_.types.size() == n,
        source_ + ": " + std::to_string(v_.types.size()) + " token types for " + std::to_string(n) + " tokens");
  if (v_.types.empty()) v_.types.assign(n, TokenType::Normal);
  for (auto [name, id] : {std::pair{"bos", v_.bos_id}, {"eos", v_.eos_id}, {"pad", v_.pad_id}})
    check(id >= -1 && id < static_cast<int64_t>(n),
          source_ + ": " + name + " id " + std::to_string(id) + " out of range for " + std::to_string(n) + " tokens");
  const std::string canonical = canonical_pretokenizer(v_.pretokenizer);
  check(!canonical.empty(), source_ + ": unknown pre-tokenizer '" + v_.pretokenizer +
                                "' (known: gpt2, llama3, qwen2, or regex:<PCRE2 pattern>)");
  v_.pretokenizer = canonical;
  regex_ = std::make_unique<SplitRegex>(byte_bpe_pattern(v_.pretokenizer), source_);

  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (v_.tokens[i].empty()) continue;  // a hole in the id space
    token_to_id_.try_emplace(v_.tokens[i], id);
    if (v_.types[i] == TokenType::Control) specials_.add(v_.tokens[i], id, false);
    if (v_.types[i] == TokenType::UserDefined) specials_.add(v_.tokens[i], id, true);
  }
  for (size_t r = 0; r < v_.merges.size(); ++r) {
    const std::string& m = v_.merges[r];
    const size_t sp = m.find(' ');
    check(sp != std::string::npos && sp > 0 && sp + 1 < m.size() && m.find(' ', sp + 1) == std::string::npos,
          source_ + ": merge " + std::to_string(r) + " '" + m + "' is not two tokens separated by one space");
    const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
    const int32_t ia = find(a), ib = find(b), iab = find(a + b);
    check(ia >= 0 && ib >= 0 && iab >= 0,
          source_ + ": merge " + std::to_string(r) + " '" + m + "' uses a token that is not in the vocabulary");
    merge_rank_.try_emplace(bpe::pair_key(ia, ib), static_cast<int32_t>(r));
  }
  set_bos_id(v_.bos_id);
  set_eos_id(v_.eos_id);
  set_pad_id(v_.pad_id);
  set_add_bos_default(v_.add_bos && v_.bos_id >= 0);
}

void ByteBpeTokenizer::encode_chunk(std::string_view chunk, std::vector<int32_t>& out) const {
  {
    std::lock_guard lock(cache_mu_);
    if (auto it = cache_.find(chunk); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const ByteAlphabet& abc = alphabet();
  std::string mapped;
  std::vector<uint32_t> starts;
  for (char c : chunk) {
    starts.push_back(static_cast<uint32_t>(mapped.size()));
    mapped += abc.to_char[static_cast<unsigned char>(c)];
  }
  std::vector<int32_t> ids;
  if (const int32_t whole = v_.ignore_merges ? find(mapped) : -1; whole >= 0) {
    ids.push_back(whole);
  } else {
    auto rank = [this](std::string_view l, std::string_view r) -> std::optional<double> {
      const int32_t il = find(l), ir = find(r);
      if (il < 0 || ir < 0) return std::nullopt;
      auto it = merge_rank_.find(bpe::pair_key(il, ir));
      if (it == merge_rank_.end()) return std::nullopt;
      return it->second;
    };
    for (std::string_view piece : bpe::merge(mapped, starts, rank)) {
      // Only a single byte's stand-in can miss the vocabulary (merges always make tokens);
      // HF drops it when there is no unknown token, and so do we.
      if (const int32_t id = find(piece); id >= 0) ids.push_back(id);
    }
  }
  out.insert(out.end(), ids.begin(), ids.end());
  std::lock_guard lock(cache_mu_);
  if (cache_.size() > (1u << 16)) cache_.clear();  // bounded memory on endless streams
  cache_.try_emplace(std::string(chunk), std::move(ids));
}

std::vector<int32_t> ByteBpeTokenizer::encode(const std::string& text, const EncodeOptions& opt) const {
  std::vector<int32_t> out;
  if (opt.add_bos && v_.bos_id >= 0) out.push_back(v_.bos_id);
  std::vector<std::string_view> chunks;
  for (const auto& frag : specials_.split(text, opt.parse_special)) {
    if (frag.id >= 0) {
      out.push_back(frag.id);
      continue;
    }
    chunks.clear();
    regex_->split(frag.text, chunks);
    for (std::string_view chunk : chunks) encode_chunk(chunk, out);
  }
  if (opt.add_eos && v_.eos_id >= 0) out.push_back(v_.eos_id);
  return out;
}

std::string ByteBpeTokenizer::token_bytes(int32_t id) const {
  const size_t i = checked(id);
  const std::string& t = v_.tokens[i];
  if (is_added(i)) return t;  // added tokens are plain text, not in the byte alphabet
  const ByteAlphabet& abc = alphabet();
  std::string out;
  for (size_t k = 0; k < t.size();) {
    const auto st = utf8::step(t, k);
    const size_t len = st.step == utf8::Step::Ok ? st.len : 1;
    const char32_t cp = st.step == utf8::Step::Ok ? utf8::decode(t, k, len) : 0xFFFF;
    if (cp < abc.to_byte.size() && abc.to_byte[cp] >= 0)
      out += static_cast<char>(abc.to_byte[cp]);
    else
      out.append(t, k, len);  // not a stand-in: kept as written
    k += len;
  }
  return out;
}

std::string ByteBpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (skip_special && is_special(id)) continue;
    out += token_bytes(id);
  }
  return out;
}

nlohmann::json ByteBpeTokenizer::to_hf_json() const {
  using nlohmann::json;
  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < v_.tokens.size(); ++i) {
    const auto id = static_cast<int32_t>(i);
    if (v_.tokens[i].empty()) continue;
    if (!vocab.contains(v_.tokens[i])) vocab[v_.tokens[i]] = id;
    if (is_added(i)) added.push_back(bpe::hf_added_token(id, v_.tokens[i], v_.types[i] == TokenType::Control));
  }
  std::vector<std::pair<std::string, std::string>> merges;
  for (const std::string& m : v_.merges) {
    const size_t sp = m.find(' ');
    merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  auto byte_level = [](bool use_regex) {
    return json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
  };
  json pre = v_.pretokenizer == "gpt2"
                 ? byte_level(true)
                 : json{{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Split"},
                                                        {"pattern", {{"Regex", byte_bpe_pattern(v_.pretokenizer)}}},
                                                        {"behavior", "Isolated"},
                                                        {"invert", false}},
                                                       byte_level(false)})}};
  const bool bos = v_.add_bos && v_.bos_id >= 0;
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"post_processor", bos ? bpe::hf_bos_template(v_.tokens[v_.bos_id], v_.bos_id) : json(nullptr)},
          {"decoder", byte_level(true)},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", v_.ignore_merges},
            {"vocab", vocab},
            {"merges", bpe::hf_merges(merges)}}}};
}

}  // namespace

std::string byte_bpe_pattern(const std::string& pretokenizer) {
  if (pretokenizer == "gpt2" || pretokenizer == "gpt-2") return kGpt2Pattern;
  if (pretokenizer == "llama3" || pretokenizer == "llama-bpe") return kLlama3Pattern;
  if (pretokenizer == "qwen2") return kQwen2Pattern;
  if (pretokenizer.rfind("regex:", 0) == 0) return pretokenizer.substr(6);
  throw Error("unknown pre-tokenizer '" + pretokenizer + "' (known: gpt2, llama3, qwen2, or regex:<PCRE2 pattern>)");
}

std::vector<std::string> byte_bpe_pretokenize(const std::string& pretokenizer, const std::string& text) {
  const SplitRegex regex(byte_bpe_pattern(pretokenizer), "pre-tokenizer '" + pretokenizer + "'");
  std::vector<std::string_view> chunks;
  regex.split(text, chunks);
  return {chunks.begin(), chunks.end()};
}

const ByteBpeVocab* byte_bpe_vocab_of(const Tokenizer& tok) {
  const auto* bpe = dynamic_cast<const ByteBpeTokenizer*>(&tok);
  return bpe ? &bpe->vocab() : nullptr;
}

std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(ByteBpeVocab vocab, const std::string& source) {
  return std::make_unique<ByteBpeTokenizer>(std::move(vocab), source);
}

}  // namespace rlhf
