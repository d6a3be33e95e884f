// Finding and reading tokenizers (HF tokenizer.json + tokenizer_config.json, GPT-2's
// encoder.json + vocab.bpe, llama2.c .bin), writing tokenizer_config.json, and streaming decode.
#include "tokenizer/tokenizer.h"

#include <optional>

#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"

namespace rlhf {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kExpected =
    "expected a folder with tokenizer.json or encoder.json + vocab.bpe, a tokenizer.json file, "
    "or a llama2.c tokenizer .bin";

json parse_json_file(const fs::path& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

// The leaves of a tokenizer.json component: the node itself, or the members of a Sequence.
std::vector<json> parts(const json& node) {
  std::vector<json> out;
  if (!node.is_object()) return out;
  if (node.value("type", "") != "Sequence") return {node};
  for (const char* key : {"normalizers", "pretokenizers", "decoders", "processors"}) {
    if (!node.contains(key) || !node[key].is_array()) continue;
    for (const json& child : node[key]) {
      auto sub = parts(child);
      out.insert(out.end(), sub.begin(), sub.end());
    }
  }
  return out;
}

const json* find_part(const std::vector<json>& ps, const std::string& type) {
  for (const json& p : ps)
    if (p.value("type", "") == type) return &p;
  return nullptr;
}

// tokenizer_config.json writes tokens as "text" or {"content": "text", ...}.
std::string config_token(const json& config, const char* key) {
  if (!config.is_object() || !config.contains(key)) return "";
  const json& t = config[key];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_object() && t.contains("content") && t["content"].is_string()) return t["content"].get<std::string>();
  return "";
}

// The id a TemplateProcessing post-processor puts first (the BOS rule), if any.
std::optional<int32_t> template_bos(const json& post_processor) {
  const std::vector<json> ps = parts(post_processor);
  const json* tp = find_part(ps, "TemplateProcessing");
  if (!tp || !tp->contains("single") || !(*tp)["single"].is_array() || (*tp)["single"].empty()) return std::nullopt;
  const json& first = (*tp)["single"][0];
  if (!first.contains("SpecialToken")) return std::nullopt;
  const std::string name = first["SpecialToken"].value("id", "");
  const json& specials = tp->value("special_tokens", json::object());
  if (!specials.contains(name) || !specials[name].contains("ids") || specials[name]["ids"].empty())
    return std::nullopt;
  return specials[name]["ids"][0].get<int32_t>();
}

// A vocabulary entry's id, checked before the id table is sized by it: a non-negative integer
// below twice the number of entries. Ids may leave holes, but not more holes than tokens: one
// id of 67,108,863 in a 15 KB file would otherwise make a table of 67 million tokens.
size_t token_id_of(const json& jid, size_t entries, const std::string& text, const std::string& where) {
  const int64_t limit = 2 * static_cast<int64_t>(entries);
  check(jid.is_number_integer() && jid.get<int64_t>() >= 0 && jid.get<int64_t>() < limit,
        where + ": bad token id " + jid.dump() + " for '" + text + "' (ids are integers from 0 to below " +
            std::to_string(limit) + ", twice the " + std::to_string(entries) + " tokens listed)");
  return jid.get<size_t>();
}

// What tokenizer.json's vocabulary and added tokens say about each id.
struct HfVocab {
  std::vector<std::string> tokens;  // "" where no id was given
  std::vector<int> added;           // 0: model vocabulary, 1: added special, 2: added normal
  std::vector<std::pair<std::string, std::string>> merges;
};

HfVocab read_hf_vocab(const json& model, const json& added_tokens, const std::string& source) {
  HfVocab v;
  check(model.contains("vocab") && model["vocab"].is_object(), source + ": model.vocab is missing or not an object");
  const size_t entries = model["vocab"].size() + (added_tokens.is_array() ? added_tokens.size() : 0);
  auto place = [&](const std::string& text, const json& jid, int added, const std::string& where) {
    const size_t id = token_id_of(jid, entries, text, source + ": " + where);
    if (id >= v.tokens.size()) {
      v.tokens.resize(id + 1);
      v.added.resize(id + 1, 0);
    }
    v.tokens[id] = text;
    v.added[id] = added;
  };
  for (const auto& [text, id] : model["vocab"].items()) place(text, id, 0, "model.vocab");
  if (added_tokens.is_array()) {
    for (const json& t : added_tokens) {
      check(t.is_object() && t.contains("content") && t["content"].is_string() && t.contains("id"),
            source + ": added_tokens: entry without id/content: " + t.dump());
      place(t["content"].get<std::string>(), t["id"], t.value("special", false) ? 1 : 2, "added_tokens");
    }
  }
  const json merges = model.value("merges", json::array());
  check(merges.is_array(), source + ": model.merges is not a list");
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& m = merges[r];
    if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    // The older "a b" form: neither part can hold a space.
    const std::string s = m.is_string() ? m.get<std::string>() : "";
    const size_t sp = s.find(' ');
    check(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos,
          source + ": model.merges[" + std::to_string(r) + "] = " + m.dump() +
              " is neither \"a b\" nor [\"a\", \"b\"]");
    v.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
  }
  return v;
}

// BOS/EOS/PAD: tokenizer_config.json names them; otherwise the post-processor's template
// gives BOS, and `fallback_bos`/`fallback_eos` name the usual tokens of the family.
struct SpecialIds {
  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false;
};
SpecialIds read_special_ids(const json& tj, const json& config, const HfVocab& v, const std::string& fallback_bos,
                            const std::string& fallback_eos, const std::string& source) {
  auto id_of = [&](const std::string& text) -> int32_t {
    for (size_t i = 0; i < v.tokens.size(); ++i)
      if (v.tokens[i] == text && !text.empty()) return static_cast<int32_t>(i);
    return -1;
  };
  auto from_config = [&](const char* key) -> std::optional<int32_t> {
    const std::string text = config_token(config, key);
    if (text.empty()) return std::nullopt;
    const int32_t id = id_of(text);
    check(id >= 0, source + ": tokenizer_config.json " + key + " '" + text + "' is not in the vocabulary");
    return id;
  };
  SpecialIds s;
  const std::optional<int32_t> tmpl = template_bos(tj.value("post_processor", json()));
  s.bos = from_config("bos_token").value_or(tmpl.value_or(id_of(fallback_bos)));
  s.eos = from_config("eos_token").value_or(id_of(fallback_eos));
  s.pad = from_config("pad_token").value_or(-1);
  if (config.is_object() && config.contains("add_bos_token") && config["add_bos_token"].is_boolean())
    s.add_bos = config["add_bos_token"].get<bool>();
  else
    s.add_bos = tmpl.has_value();
  return s;
}

std::unique_ptr<Tokenizer> spm_from_hf(const json& tj, const json& config, HfVocab v, const json& model,
                                       const std::vector<json>& norm, const json* metaspace,
                                       const std::string& source) {
  SpmVocab sv;
  bool prefix = false;
  for (const json& n : norm)
    if (n.value("type", "") == "Prepend" && n.value("prepend", "") == "\xE2\x96\x81") prefix = true;
  if (metaspace) {
    check(metaspace->value("replacement", "\xE2\x96\x81") == "\xE2\x96\x81",
          source + ": Metaspace pre-tokenizer with a replacement other than U+2581 is not supported");
    check(!metaspace->value("split", true), source + ": Metaspace pre-tokenizer with split=true is not supported");
    prefix = metaspace->value("prepend_scheme", "always") != "never" && metaspace->value("add_prefix_space", true);
  }
  sv.add_dummy_prefix = prefix;
  const std::string unk = model.value("unk_token", json()).is_string() ? model["unk_token"].get<std::string>() : "";
  sv.types.resize(v.tokens.size(), TokenType::Normal);
  sv.unk_id = -1;
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    if (v.added[i] == 1) sv.types[i] = TokenType::Control;
    if (v.added[i] == 2) sv.types[i] = TokenType::UserDefined;
    if (v.added[i] == 0 && t.size() == 6 && t.rfind("<0x", 0) == 0 && t[5] == '>') sv.types[i] = TokenType::Byte;
    if (!unk.empty() && t == unk) {
      sv.types[i] = TokenType::Unknown;
      sv.unk_id = static_cast<int32_t>(i);
    }
  }
  const SpecialIds s = read_special_ids(tj, config, v, "<s>", "</s>", source);
  sv.bos_id = s.bos;
  sv.eos_id = s.eos;
  sv.pad_id = s.pad;
  sv.add_bos = s.add_bos;
  sv.pieces = std::move(v.tokens);
  sv.merges = std::move(v.merges);
  check(!sv.merges.empty(), source + ": SentencePiece-style BPE without merges is not supported");
  return make_spm_tokenizer(std::move(sv), source);
}

std::unique_ptr<Tokenizer> byte_bpe_from_hf(const json& tj, const json& config, HfVocab v, const json& model,
                                            const std::vector<json>& pre, const json& byte_level,
                                            const std::string& source) {
  ByteBpeVocab bv;
  check(!byte_level.value("add_prefix_space", false),
        source + ": ByteLevel pre-tokenizer with add_prefix_space=true is not supported");
  if (byte_level.value("use_regex", true)) {
    check(pre.size() == 1, source + ": ByteLevel(use_regex=true) combined with other pre-tokenizers is not supported");
    bv.pretokenizer = "gpt2";
  } else {
    const json* split = find_part(pre, "Split");
    check(split && pre.size() == 2 && split->contains("pattern") && (*split)["pattern"].contains("Regex"),
          source + ": expected Sequence[Split(Regex), ByteLevel(use_regex=false)] as the pre-tokenizer");
    check(split->value("behavior", "") == "Isolated" && !split->value("invert", false),
          source + ": Split pre-tokenizer must have behavior Isolated and invert false");
    bv.pretokenizer = "regex:" + (*split)["pattern"]["Regex"].get<std::string>();
  }
  bv.ignore_merges = model.value("ignore_merges", false);
  bv.types.resize(v.tokens.size(), TokenType::Normal);
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.added[i] == 1) bv.types[i] = TokenType::Control;
    if (v.added[i] == 2) bv.types[i] = TokenType::UserDefined;
  }
  const SpecialIds s = read_special_ids(tj, config, v, "<|endoftext|>", "<|endoftext|>", source);
  bv.bos_id = s.bos;
  bv.eos_id = s.eos;
  bv.pad_id = s.pad;
  bv.add_bos = s.add_bos;
  bv.tokens = std::move(v.tokens);
  for (auto& [a, b] : v.merges) {
    check(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos,
          source + ": byte-level merge '" + a + "' + '" + b + "' holds a space");
    bv.merges.push_back(a + " " + b);
  }
  return make_byte_bpe_tokenizer(std::move(bv), source);
}

std::unique_ptr<Tokenizer> load_hf_file(const fs::path& file) {
  const fs::path config_path = file.parent_path() / "tokenizer_config.json";
  const json config = fs::exists(config_path) ? parse_json_file(config_path) : json();
  return tokenizer_from_hf_json(parse_json_file(file), config, file.string());
}

// OpenAI's GPT-2 files: encoder.json (token -> id) and vocab.bpe (a version line, then one
// merge per line in priority order).
std::unique_ptr<Tokenizer> load_gpt2_folder(const fs::path& dir) {
  const fs::path enc_path = dir / "encoder.json", bpe_path = dir / "vocab.bpe";
  const json enc = parse_json_file(enc_path);
  check(enc.is_object(), enc_path.string() + ": expected an object of token -> id");
  ByteBpeVocab v;
  for (const auto& [text, jid] : enc.items()) {
    const size_t id = token_id_of(jid, enc.size(), text, enc_path.string());
    if (id >= v.tokens.size()) v.tokens.resize(id + 1);
    v.tokens[id] = text;
  }
  const std::string merges = read_file(bpe_path);
  size_t line_no = 0;
  for (size_t pos = 0; pos < merges.size();) {
    size_t end = merges.find('\n', pos);
    if (end == std::string::npos) end = merges.size();
    std::string line = merges.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    v.merges.push_back(std::move(line));
  }
  v.types.assign(v.tokens.size(), TokenType::Normal);
  for (size_t i = 0; i < v.tokens.size(); ++i) {
    if (v.tokens[i] == "<|endoftext|>") {
      v.types[i] = TokenType::Control;
      v.bos_id = v.eos_id = static_cast<int32_t>(i);
    }
  }
  v.pretokenizer = "gpt2";
  return make_byte_bpe_tokenizer(std::move(v), bpe_path.string());
}

}  // namespace

std::unique_ptr<Tokenizer> tokenizer_from_hf_json(const json& tj, const json& config, const std::string& source) {
  check(tj.is_object() && tj.contains("model") && tj["model"].is_object(),
        source + ": no \"model\" section (not a tokenizer.json?)");
  const json& model = tj["model"];
  const std::string type = model.value("type", model.contains("merges") ? "BPE" : "");
  check(type == "BPE", source + ": model type '" + type +
                           "' is not supported (expected BPE: byte-level, or SentencePiece-style with byte fallback)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    check(!model.contains(key) || model[key].is_null() || model[key] == "",
          source + ": model." + key + " is not supported");
  HfVocab v = read_hf_vocab(model, tj.value("added_tokens", json()), source);

  const auto pre = parts(tj.value("pre_tokenizer", json()));
  const auto norm = parts(tj.value("normalizer", json()));
  const json* byte_level = find_part(pre, "ByteLevel");
  const json* metaspace = find_part(pre, "Metaspace");
  bool space_to_metaspace = false;
  for (const json& n : norm) {
    const std::string t = n.value("type", "");
    if (t == "Replace" && n.value("content", "") == "\xE2\x96\x81" && n.contains("pattern") &&
        n["pattern"].value("String", "") == " ")
      space_to_metaspace = true;
    // NFC (Qwen2) is accepted but not applied: text already in NFC, as nearly all is, encodes
    // identically. Anything else would change the text in ways we do not reproduce.
    check(t == "Replace" || t == "Prepend" || t == "NFC",
          source + ": normalizer '" + t + "' is not supported (only Prepend/Replace of U+2581, and NFC)");
  }
  if (byte_level) return byte_bpe_from_hf(tj, config, std::move(v), model, pre, *byte_level, source);
  if (metaspace || space_to_metaspace) {
    check(pre.empty() || (pre.size() == 1 && metaspace),
          source + ": a SentencePiece-style tokenizer.json may only have a Metaspace pre-tokenizer");
    return spm_from_hf(tj, config, std::move(v), model, norm, metaspace, source);
  }
  throw Error(source + ": unsupported tokenizer.json: expected a ByteLevel pre-tokenizer (GPT-2 family) or "
                       "U+2581 spaces via Metaspace/normalizer (SentencePiece family)");
}

std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& prompt) {
  auto ids = tok.encode(prompt, {.add_bos = false, .parse_special = true});
  const int32_t bos = tok.bos_id();
  if (bos >= 0 && (ids.empty() || (tok.add_bos_default() && ids.front() != bos))) ids.insert(ids.begin(), bos);
  return ids;
}

int32_t training_pad_id(const Tokenizer& tok) { return tok.pad_id() >= 0 ? tok.pad_id() : std::max(tok.eos_id(), 0); }

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& path) try {
  const std::string where = path.string();
  if (!fs::exists(path)) throw Error(where + ": no such file or folder (" + kExpected + ")");
  if (fs::is_directory(path)) {
    if (fs::exists(path / "tokenizer.json")) return load_hf_file(path / "tokenizer.json");
    if (fs::exists(path / "encoder.json") && fs::exists(path / "vocab.bpe")) return load_gpt2_folder(path);
    if (fs::exists(path / "tokenizer.model"))
      throw Error(where + ": only a SentencePiece tokenizer.model is there, which is not supported (" +
                  kExpected + ")");
    throw Error(where + ": no tokenizer found in this folder (" + kExpected + ")");
  }
  const std::string name = path.filename().string(), ext = path.extension().string();
  if (name == "encoder.json" || name == "vocab.bpe") return load_gpt2_folder(path.parent_path());
  if (ext == ".json") return load_hf_file(path);
  if (ext == ".bin") return make_spm_tokenizer(read_llama2c_tokenizer(path), where);
  if (ext == ".gguf")
    throw Error(where + ": a GGUF file carries its tokenizer in the model metadata; load it with the model");
  throw Error(where + ": not a tokenizer file (" + kExpected + ")");
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

json Tokenizer::hf_tokenizer_config(int64_t model_max_length) const {
  auto token_or_null = [&](int32_t id) { return id >= 0 ? json(token_text(id)) : json(nullptr); };
  json c = {{"tokenizer_class", hf_tokenizer_class()},
            {"bos_token", token_or_null(bos_id_)},
            {"eos_token", token_or_null(eos_id_)},
            {"pad_token", token_or_null(pad_id_)},
            {"add_bos_token", add_bos_default_},
            {"add_eos_token", false},
            // transformers' default clean-up rewrites " ." to "." on decode: never what we do.
            {"clean_up_tokenization_spaces", false},
            {"add_prefix_space", strips_leading_space()}};
  if (const int32_t unk = token_id("<unk>"); unk >= 0 && is_special(unk)) c["unk_token"] = "<unk>";
  // transformers 5 rebuilds LlamaTokenizer's pipeline; legacy=true makes it prepend the dummy
  // prefix after every special token too, as SentencePiece and we do (false: only at the start).
  if (hf_tokenizer_class() == "LlamaTokenizerFast") c["legacy"] = true;
  if (model_max_length >= 0) c["model_max_length"] = model_max_length;
  return c;
}

namespace {
// Takes the text off the front of `pending`, invalid bytes as U+FFFD; an incomplete character
// at the end (it can only be at the end) waits for more bytes unless `final`.
std::string take_complete(std::string& pending, bool final) {
  size_t end = 0;
  while (end < pending.size()) {
    const auto st = utf8::step(pending, end);
    if (st.step == utf8::Step::Incomplete && !final) break;
    end += st.len;
  }
  std::string out = valid_utf8(std::string_view(pending).substr(0, end));
  pending.erase(0, end);
  return out;
}
}  // namespace

std::string TextStreamer::put(int32_t id) {
  if (tok_.is_special(id)) return "";
  std::string bytes = tok_.token_bytes(id);
  if (first_ && !bytes.empty()) {
    // decode() drops one leading space of the whole text; the first bytes are where it is.
    if (tok_.strips_leading_space() && bytes[0] == ' ') bytes.erase(0, 1);
    first_ = false;
  }
  pending_ += bytes;
  return take_complete(pending_, false);
}

std::string TextStreamer::flush() { return take_complete(pending_, true); }

}  // namespace rlhf
