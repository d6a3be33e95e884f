// Tokenizer: text <-> token ids, exactly as the reference tokenizers do it. Two kinds:
//   SentencePiece-style BPE with byte fallback (Llama-2, llama2.c, GGUF "llama") and
//   byte-level BPE (GPT-2, Llama-3, Qwen2) with regex pre-tokenization (PCRE2).
// load_tokenizer() picks the right one from a file or folder.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf {

struct EncodeOptions {
  bool add_bos = false;        // prepend BOS (when the tokenizer has one)
  bool add_eos = false;        // append EOS
  bool parse_special = true;   // "<|endoftext|>" etc. in the text become their special ids
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual std::vector<int32_t> encode(const std::string& text, const EncodeOptions& opt = {}) const = 0;
  // Decodes ids to text, byte-exact: decode(encode(s)) == s for any bytes s, invalid UTF-8
  // included (so the result need not be valid UTF-8). Special tokens are dropped when
  // skip_special is true.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const = 0;
  // Raw bytes of one token as it appears in the middle of a text (may be an incomplete
  // UTF-8 sequence: byte-level and byte-fallback tokens carry single bytes). Used for
  // streaming output; see TextStreamer.
  virtual std::string token_bytes(int32_t id) const = 0;

  // True when decode() drops one leading space of the text (SentencePiece's dummy prefix);
  // TextStreamer follows the same rule.
  virtual bool strips_leading_space() const { return false; }

  virtual int64_t vocab_size() const = 0;
  virtual std::string token_text(int32_t id) const = 0;   // the vocabulary entry, as stored
  virtual int32_t token_id(const std::string& token_text) const = 0;  // -1 if absent
  virtual bool is_special(int32_t id) const = 0;     // control or unknown token

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t pad_id() const { return pad_id_; }   // -1 when the tokenizer declares none
  void set_bos_id(int32_t id) { bos_id_ = id; }
  void set_eos_id(int32_t id) { eos_id_ = id; }
  void set_pad_id(int32_t id) { pad_id_ = id; }
  bool add_bos_default() const { return add_bos_default_; }  // the model's BOS rule
  void set_add_bos_default(bool v) { add_bos_default_ = v; }

  // Serializes to Hugging Face tokenizer.json (so transformers/tokenizers load it) and the
  // matching tokenizer_config.json. `model_max_length` < 0: left out (transformers then
  // assumes no limit).
  virtual nlohmann::json to_hf_json() const = 0;
  nlohmann::json hf_tokenizer_config(int64_t model_max_length = -1) const;
  // The transformers class named in tokenizer_config.json.
  virtual std::string hf_tokenizer_class() const = 0;

 protected:
  int32_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool add_bos_default_ = false;
};

// The one rule for turning a prompt into ids, used wherever a prompt is encoded (labeling,
// PPO rollouts, reward normalisation, evaluation, the label server, `rlhf generate`, training
// examples): the text as `tokenizer(text)` encodes it in Python, i.e. BOS first when the
// tokenizer's own rule adds one (Llama: yes; GPT-2: no) and the text does not start with it
// already, and BOS also when the text gives no token at all (a model needs one to start
// from). Special-token text ("<|im_start|>") is parsed. Empty only for an empty prompt and a
// tokenizer without BOS.
std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& prompt);

// The pad id of training and scoring batches: the tokenizer's pad, else its EOS (pad
// positions are masked either way).
int32_t training_pad_id(const Tokenizer& tok);

// Loads a tokenizer from: a Hugging Face folder or tokenizer.json; a folder or pair with
// encoder.json + vocab.bpe (GPT-2); a llama2.c tokenizer .bin (tok512.bin). GGUF files carry
// their tokenizer in the metadata: see formats/gguf.h. Throws Error naming the path.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);
// Same from an already-parsed tokenizer.json (+ optional tokenizer_config.json, may be null;
// its bos/eos/pad tokens and add_bos_token win over the post-processor's template).
// Supported: BPE models that are byte-level (ByteLevel, or Split(Regex) + ByteLevel) or
// SentencePiece-style (U+2581 via Metaspace or Replace/Prepend normalizers, byte fallback).
// An NFC normalizer (Qwen2) is accepted but not applied. Anything else throws Error naming
// `source`.
std::unique_ptr<Tokenizer> tokenizer_from_hf_json(const nlohmann::json& tokenizer_json,
                                                  const nlohmann::json& tokenizer_config,
                                                  const std::string& source);

// Turns a stream of token ids into printable text, holding back bytes of an incomplete
// UTF-8 character until it completes. Special tokens are skipped and the tokenizer's
// leading-space rule applied, so put()s + flush() == decode(ids) for text that is valid
// UTF-8; invalid bytes come out as U+FFFD (one per maximal invalid subpart) where decode()
// returns them raw.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tok) : tok_(tok) {}
  std::string put(int32_t id);     // text that became complete with this token
  std::string flush();             // whatever is left (incomplete bytes -> U+FFFD)
 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool first_ = true;
};

}  // namespace rlhf

namespace rlhf {

// Token kinds as in GGUF / SentencePiece: 1 normal, 2 unknown, 3 control, 4 user-defined,
// 5 unused, 6 byte.
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

// SentencePiece-style BPE with byte fallback. Pieces use U+2581 for spaces and <0xNN> for
// byte tokens; merges follow the scores (higher merges first), as SentencePiece/llama.cpp do,
// or, when `merges` is given (an HF tokenizer.json), the merge ranks as HF tokenizers does.
// `add_dummy_prefix`: a space is prepended to the text before encoding (Llama-2 default);
// like llama.cpp, every text fragment gets it (the first one, and each one after a special
// token that encode() split out).
// Control and unknown pieces are special: with parse_special their strings in the text
// become their ids; user-defined pieces are always matched whole.
struct SpmVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;         // may be empty when `merges` is given
  std::vector<TokenType> types;      // empty: all Normal except detected <0xNN> / bos / eos / unk
  std::vector<std::pair<std::string, std::string>> merges;  // empty: merge by score
  int32_t bos_id = 1, eos_id = 2, unk_id = 0, pad_id = -1;
  bool add_dummy_prefix = true;
  bool add_bos = true;
};
std::unique_ptr<Tokenizer> make_spm_tokenizer(SpmVocab vocab, const std::string& source);

// Reads a llama2.c tokenizer (tok512.bin style): pieces get U+2581 for spaces and BOS/EOS/UNK
// become <s>, </s>, <unk> control pieces. Throws Error naming the file when it is truncated.
SpmVocab read_llama2c_tokenizer(const std::filesystem::path& path);

// Byte-level BPE (GPT-2 family). `tokens` are in GPT-2's byte-to-unicode alphabet;
// `merges` are "a b" strings in priority order; `pretokenizer` names the split pattern:
// "gpt2", "llama3", "qwen2" (or a raw PCRE2 pattern when it starts with "regex:").
// Control tokens are special (split out of the text with parse_special, dropped by
// decode(skip_special)); user-defined tokens are always split out. Both decode to their text
// as stored, not through the byte alphabet. Empty token strings are holes in the id space.
struct ByteBpeVocab {
  std::vector<std::string> tokens;
  std::vector<std::string> merges;
  std::vector<TokenType> types;      // empty: all Normal
  std::string pretokenizer = "gpt2";
  int32_t bos_id = -1, eos_id = -1, pad_id = -1;
  bool add_bos = false;
  bool ignore_merges = false;        // HF's flag (Llama-3): a chunk that is a token is kept whole
};

// The split patterns behind the pretokenizer names above ("regex:..." returns the rest).
std::string byte_bpe_pattern(const std::string& pretokenizer);
// Pre-tokenization alone (for tests and debugging): the chunks BPE then runs on.
std::vector<std::string> byte_bpe_pretokenize(const std::string& pretokenizer, const std::string& text);
std::unique_ptr<Tokenizer> make_byte_bpe_tokenizer(ByteBpeVocab vocab, const std::string& source);

}  // namespace rlhf
