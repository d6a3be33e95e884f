// Byte-level BPE: GPT-2 against reference encodings from OpenAI's encoder (gpt-3-encoder),
// special tokens, byte-exact round trips of any bytes, the Llama-3/Qwen2 split patterns, and
// the tokenizer.json round trip.
#include <random>
#include <thread>

#include "core/error.h"
#include "core/io.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {
namespace {

std::filesystem::path gpt2_dir() { return test::data_dir() / "gpt2-bpe"; }

std::vector<std::string> shakespeare_lines(size_t n) {
  const std::string text = read_file(test::data_dir() / "tinyshakespeare" / "input.txt");
  std::vector<std::string> lines;
  for (size_t pos = 0, end; lines.size() < n && (end = text.find('\n', pos)) != std::string::npos; pos = end + 1)
    lines.push_back(text.substr(pos, end - pos));
  return lines;
}

TEST(ByteBpeTokenizer, Gpt2MatchesReferenceEncodings) {
  auto tok = load_tokenizer(gpt2_dir());
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->bos_id(), 50256);
  EXPECT_EQ(tok->eos_id(), 50256);
  const auto refs = nlohmann::json::parse(read_file(gpt2_dir() / "reference_encodings_gpt-3-encoder-1.1.4.json"));
  ASSERT_GE(refs.size(), 9u);
  for (const auto& ref : refs) {
    const std::string text = ref["text"];
    const auto ids = tok->encode(text, {.parse_special = false});  // the reference treats <|endoftext|> as text
    EXPECT_EQ(ids, ref["ids"].get<std::vector<int32_t>>()) << text;
    if (ref["roundtrip"]) {
      EXPECT_EQ(tok->decode(ids), text);
    }
  }
}

TEST(ByteBpeTokenizer, SpecialTokens) {
  auto tok = load_tokenizer(gpt2_dir());
  EXPECT_EQ(tok->encode("<|endoftext|>"), (std::vector<int32_t>{50256}));
  EXPECT_EQ(tok->encode("a<|endoftext|>b"), (std::vector<int32_t>{64, 50256, 65}));
  EXPECT_GT(tok->encode("<|endoftext|>", {.parse_special = false}).size(), 1u);
  EXPECT_TRUE(tok->is_special(50256));
  EXPECT_EQ(tok->decode({64, 50256, 65}), "ab");
  EXPECT_EQ(tok->decode({64, 50256, 65}, /*skip_special=*/false), "a<|endoftext|>b");
  EXPECT_EQ(tok->encode("Hi", {.add_bos = true, .add_eos = true}), (std::vector<int32_t>{50256, 17250, 50256}));
}

TEST(ByteBpeTokenizer, AnyBytesRoundTripExactly) {
  auto tok = load_tokenizer(gpt2_dir());
  const std::vector<std::string> texts = {
      "emoji \xF0\x9F\x99\x82\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD family \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9",
      "中文和日本語の混合テキスト",
      "e\xCC\x81 a\xCC\x8A combining marks \xE0\xA4\xA8\xE0\xA4\xBF",
      "\xFF\xFE",                       // never valid in UTF-8
      "lone \x80 continuation",         // a continuation byte without a lead
      "cut \xE6\x97",                   // a 3-byte sequence missing its last byte
      "\xE6\x97",                       // ... alone
      "surrogate \xED\xA0\x80 overlong \xC0\xAF end \xF4\x90\x80\x80",
      std::string("nul \0 inside", 13),
      "\n\n\t  \r\n   ",
  };
  for (const auto& text : texts) {
    const auto ids = tok->encode(text);
    EXPECT_EQ(tok->decode(ids), text) << "ids: " << ::testing::PrintToString(ids);
  }
  // Random bytes, biased towards UTF-8 lead/continuation bytes and whitespace.
  std::mt19937 rng(1234);
  const std::string alphabet = std::string("ab 1\n\t'") + "\x80\xBF\xC2\xC3\xE2\xE6\xED\xF0\xF4\xF8\xFF\x9F\x97";
  for (int n = 0; n < 300; ++n) {
    std::string text;
    for (int k = rng() % 24; k > 0; --k) text += alphabet[rng() % alphabet.size()];
    ASSERT_EQ(tok->decode(tok->encode(text)), text) << ::testing::PrintToString(text);
  }
  // An invalid byte is a chunk of its own: exactly one byte token.
  const auto ff = tok->encode("\xFF");
  ASSERT_EQ(ff.size(), 1u);
  EXPECT_EQ(tok->token_bytes(ff[0]), "\xFF");
}

TEST(ByteBpeTokenizer, SplitPatterns) {
  using V = std::vector<std::string>;
  EXPECT_EQ(byte_bpe_pretokenize("gpt2", "1234567 abc"), (V{"1234567", " abc"}));
  EXPECT_EQ(byte_bpe_pretokenize("llama3", "1234567 abc"), (V{"123", "456", "7", " abc"}));
  EXPECT_EQ(byte_bpe_pretokenize("qwen2", "2024 x"), (V{"2", "0", "2", "4", " x"}));
  // Llama-3 contractions ignore case, GPT-2's do not.
  EXPECT_EQ(byte_bpe_pretokenize("llama3", "WE'LL go"), (V{"WE", "'LL", " go"}));
  EXPECT_EQ(byte_bpe_pretokenize("gpt2", "WE'LL go"), (V{"WE", "'", "LL", " go"}));
  // \s+(?!\S) leaves the last whitespace character for the next word (GPT-2's own rule).
  EXPECT_EQ(byte_bpe_pretokenize("gpt2", "a  b\n\nc"), (V{"a", " ", " b", "\n", "\n", "c"}));
  EXPECT_EQ(byte_bpe_pretokenize("llama3", "a:\n\n  b"), (V{"a", ":\n\n", " ", " b"}));
  EXPECT_EQ(byte_bpe_pretokenize("gpt2", "x\xFFy"), (V{"x", "\xFF", "y"}));
  EXPECT_THROW(byte_bpe_pretokenize("bert", "x"), Error);
  EXPECT_THROW(byte_bpe_pretokenize("regex:(unclosed", "x"), Error);
}

// A tiny vocabulary: the 256 byte stand-ins plus merges that build "1234" digit by digit.
ByteBpeVocab digit_vocab(const std::string& pretokenizer) {
  auto gpt2 = load_tokenizer(gpt2_dir());
  ByteBpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(gpt2->token_text(gpt2->encode(std::string(1, char(b)))[0]));
  v.tokens.insert(v.tokens.end(), {"12", "123", "34", "1234"});
  v.merges = {"1 2", "12 3", "3 4", "123 4"};
  v.pretokenizer = pretokenizer;
  return v;
}

TEST(ByteBpeTokenizer, Llama3PatternSplitsDigitsInThrees) {
  auto gpt2_style = make_byte_bpe_tokenizer(digit_vocab("gpt2"), "digits/gpt2");
  auto llama3_style = make_byte_bpe_tokenizer(digit_vocab("llama3"), "digits/llama3");
  const int32_t t123 = 257, t1234 = 259;
  EXPECT_EQ(gpt2_style->encode("1234"), (std::vector<int32_t>{t1234}));
  EXPECT_EQ(llama3_style->encode("1234"), (std::vector<int32_t>{t123, '4'}));
  EXPECT_EQ(llama3_style->decode(llama3_style->encode("1234")), "1234");
}

TEST(ByteBpeTokenizer, HfJsonRoundTripEncodesIdentically) {
  auto tok = load_tokenizer(gpt2_dir());
  const auto lines = shakespeare_lines(400);
  const auto cfg = tok->hf_tokenizer_config();
  EXPECT_EQ(cfg["tokenizer_class"], "GPT2TokenizerFast");
  EXPECT_EQ(cfg["bos_token"], "<|endoftext|>");
  EXPECT_EQ(cfg["add_bos_token"], false);
  EXPECT_FALSE(cfg.contains("model_max_length"));

  // Through files, as load_tokenizer finds them.
  test::TempDir dir;
  write_file_atomic(dir / "tokenizer.json", tok->to_hf_json().dump());
  write_file_atomic(dir / "tokenizer_config.json", cfg.dump());
  auto hf = load_tokenizer(dir.path);
  EXPECT_EQ(hf->vocab_size(), tok->vocab_size());
  EXPECT_EQ(hf->bos_id(), 50256);
  EXPECT_EQ(hf->hf_tokenizer_class(), "GPT2TokenizerFast");
  for (const auto& line : lines) ASSERT_EQ(hf->encode(line), tok->encode(line)) << line;
  EXPECT_EQ(hf->encode("a<|endoftext|>b"), (std::vector<int32_t>{64, 50256, 65}));

  // The same vocabulary with Llama-3's pattern goes through Split(Regex) + ByteLevel.
  ByteBpeVocab v;
  for (int32_t i = 0; i < tok->vocab_size(); ++i) v.tokens.push_back(tok->token_text(i));
  const auto j = tok->to_hf_json();
  for (const auto& m : j["model"]["merges"]) v.merges.push_back(m.get<std::string>());
  v.types.assign(v.tokens.size(), TokenType::Normal);
  v.types[50256] = TokenType::Control;
  v.pretokenizer = "llama3";
  v.bos_id = v.eos_id = 50256;
  v.add_bos = true;
  auto llama3 = make_byte_bpe_tokenizer(v, "gpt2 vocab with llama3 split");
  const auto j3 = llama3->to_hf_json();
  EXPECT_EQ(j3["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(j3["post_processor"]["type"], "TemplateProcessing");
  auto llama3_hf = tokenizer_from_hf_json(j3, nullptr, "exported");
  EXPECT_EQ(llama3_hf->hf_tokenizer_class(), "PreTrainedTokenizerFast");
  EXPECT_TRUE(llama3_hf->add_bos_default());
  EXPECT_EQ(llama3->encode("1234567"), (std::vector<int32_t>{10163, 29228, 22}));  // 123 456 7
  for (const auto& line : lines) {
    const auto ids = llama3->encode(line, {.add_bos = true});
    ASSERT_EQ(llama3_hf->encode(line, {.add_bos = true}), ids) << line;
    ASSERT_EQ(llama3_hf->decode(ids), line);
  }
}

TEST(ByteBpeTokenizer, ConcurrentEncodesAgree) {
  // encode() is const and shares a chunk cache: threads must see the same ids as one thread.
  auto tok = load_tokenizer(gpt2_dir());
  const auto lines = shakespeare_lines(300);
  auto reference = load_tokenizer(gpt2_dir());  // its own cache, filled by one thread
  std::vector<std::vector<int32_t>> want;
  for (const auto& line : lines) want.push_back(reference->encode(line));
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (size_t i = 0; i < lines.size(); ++i) mismatches[t] += tok->encode(lines[(i + 37 * t) % lines.size()]) !=
                                                                want[(i + 37 * t) % lines.size()];
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(ByteBpeTokenizer, ConfigTokensAndBadFiles) {
  auto tok = load_tokenizer(gpt2_dir());
  const auto j = tok->to_hf_json();
  const nlohmann::json cfg = {{"bos_token", {{"content", "<|endoftext|>"}, {"special", true}}},
                              {"pad_token", "<|endoftext|>"},
                              {"add_bos_token", true}};
  auto hf = tokenizer_from_hf_json(j, cfg, "t");
  EXPECT_EQ(hf->pad_id(), 50256);
  EXPECT_TRUE(hf->add_bos_default());
  EXPECT_THROW(tokenizer_from_hf_json(j, {{"eos_token", "<nope>"}}, "t"), Error);

  auto expect_error = [](const nlohmann::json& bad, const std::string& what) {
    try {
      tokenizer_from_hf_json(bad, nullptr, "bad/tokenizer.json");
      FAIL() << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bad/tokenizer.json"), std::string::npos) << e.what();
    }
  };
  expect_error({{"model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array()}}}}, "Unigram");
  expect_error({{"version", "1.0"}}, "no model");
  auto broken = j;
  broken["model"]["merges"].push_back("Ġnot_a_token x");
  expect_error(broken, "merge of unknown tokens");
  auto whitespace = j;
  whitespace["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(whitespace, "unsupported pre-tokenizer");

  test::TempDir dir;
  write_file_atomic(dir / "tokenizer.json", "{ not json");
  try {
    load_tokenizer(dir.path);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "tokenizer.json").string()), std::string::npos) << e.what();
  }
}

// One token id of 67,108,863 in a small file used to size a 67-million-token table (3.2 GB)
// and be accepted; ids may leave holes, but no more holes than there are tokens.
TEST(ByteBpeTokenizer, HugeTokenIdIsAnErrorBeforeAnyAllocation) {
  test::TempDir dir;
  write_file_atomic(dir / "encoder.json", nlohmann::json{{"a", 0}, {"b", 1}, {"ab", 2}, {"c", 67108863}}.dump());
  write_file_atomic(dir / "vocab.bpe", "#version: 0.2\na b\n");
  try {
    load_tokenizer(dir.path);
    ADD_FAILURE() << "no Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find((dir / "encoder.json").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("67108863"), std::string::npos) << msg;
  }
  const nlohmann::json tj = {
      {"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", {"a b"}}}},
      {"added_tokens", {{{"id", 67108863}, {"content", "<big>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}}};
  try {
    tokenizer_from_hf_json(tj, nullptr, "big/tokenizer.json");
    ADD_FAILURE() << "no Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("big/tokenizer.json: added_tokens: bad token id 67108863"), std::string::npos) << msg;
  }
  // A few holes are fine (the id space is sized by the largest id).
  auto holes = tj;
  holes["added_tokens"][0]["id"] = 4;
  EXPECT_EQ(tokenizer_from_hf_json(holes, nullptr, "t")->vocab_size(), 5);
}

}  // namespace
}  // namespace rlhf
