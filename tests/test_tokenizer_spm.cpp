// SentencePiece-style BPE on the real llama2.c tok512 tokenizer: reference ids from the
// stories260K model, byte fallback, streaming, the HF round trip, and broken files.
#include <fstream>

#include "core/error.h"
#include "core/io.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {
namespace {

std::filesystem::path tok512_path() { return test::data_dir() / "stories260K" / "tok512.bin"; }

std::vector<int32_t> greedy_ids() {
  const auto j = nlohmann::json::parse(read_file(test::data_dir() / "stories260K" / "expected_greedy_ids.json"));
  return j.at("greedy_next_ids_64").get<std::vector<int32_t>>();
}

const char* kLily = "Once upon a time, there was a little girl named Lily.";

TEST(SpmTokenizer, LoadsLlama2cTokenizer) {
  auto tok = load_tokenizer(tok512_path());
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->token_text(1), "<s>");
  EXPECT_EQ(tok->token_text(2), "</s>");
  EXPECT_EQ(tok->token_text(263), "\xE2\x96\x81w");  // llama2.c writes ' ', pieces use U+2581
  EXPECT_EQ(tok->token_id("<0x0A>"), 3 + 0x0A);        // bytes occupy ids 3..258
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_FALSE(tok->is_special(300));
  EXPECT_TRUE(tok->add_bos_default());
}

TEST(SpmTokenizer, EncodesLikeTheModelWasTrained) {
  auto tok = load_tokenizer(tok512_path());
  // The model's own greedy continuation of BOS starts with exactly this sentence, so its
  // tokens are the reference segmentation.
  const auto ids = tok->encode(kLily);
  const auto greedy = greedy_ids();
  ASSERT_GE(greedy.size(), ids.size());
  EXPECT_EQ(ids, std::vector<int32_t>(greedy.begin(), greedy.begin() + ids.size()));
  EXPECT_EQ(tok->decode(ids), kLily);

  const auto with_bos = tok->encode(kLily, {.add_bos = true});
  EXPECT_EQ(with_bos.front(), 1);
  EXPECT_EQ(tok->decode(with_bos), kLily);
  EXPECT_EQ(tok->decode(with_bos, /*skip_special=*/false), std::string("<s> ") + kLily);
  EXPECT_TRUE(tok->encode("").empty());
  EXPECT_EQ(tok->encode("", {.add_bos = true, .add_eos = true}), (std::vector<int32_t>{1, 2}));
}

TEST(SpmTokenizer, GreedyIdsDecodeToReferenceText) {
  auto tok = load_tokenizer(tok512_path());
  const std::string expected = read_file(test::data_dir() / "stories260K" / "expected_greedy_t0.txt");
  const std::string text = tok->decode(greedy_ids());
  EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside in the park", 0), 0u)
      << text;
  EXPECT_GT(text.size(), 150u);
  EXPECT_EQ(expected.substr(0, text.size()), text);
  // After BOS, as the model produced them.
  auto with_bos = greedy_ids();
  with_bos.insert(with_bos.begin(), 1);
  EXPECT_EQ(tok->decode(with_bos), text);
}

TEST(SpmTokenizer, ByteFallbackRoundTrips) {
  auto tok = load_tokenizer(tok512_path());
  const std::string text = "Lily saw 日本 and \xF0\x9F\x99\x82!";  // CJK and an emoji: not in 512 pieces
  const auto ids = tok->encode(text);
  EXPECT_EQ(tok->decode(ids), text);
  // The emoji is its four UTF-8 bytes as <0xNN> tokens.
  const std::vector<int32_t> emoji = {tok->token_id("<0xF0>"), tok->token_id("<0x9F>"), tok->token_id("<0x99>"),
                                      tok->token_id("<0x82>")};
  EXPECT_NE(std::search(ids.begin(), ids.end(), emoji.begin(), emoji.end()), ids.end());
  EXPECT_EQ(tok->token_bytes(emoji[0]), "\xF0");
  // Invalid UTF-8 falls back to its bytes as well, and comes back unchanged.
  const std::string invalid = "a\xFF\xFE b \xE6\x97 c\x80";
  EXPECT_EQ(tok->decode(tok->encode(invalid)), invalid);
}

TEST(SpmTokenizer, SpecialTokensInText) {
  auto tok = load_tokenizer(tok512_path());
  const auto parsed = tok->encode("<s>Hi</s>", {.parse_special = true});
  EXPECT_EQ(parsed.front(), 1);
  EXPECT_EQ(parsed.back(), 2);
  // Each text fragment gets the dummy prefix (as SentencePiece encoding it separately would).
  EXPECT_EQ(std::vector<int32_t>(parsed.begin() + 1, parsed.end() - 1), tok->encode("Hi"));
  const auto literal = tok->encode("<s>Hi</s>", {.parse_special = false});
  EXPECT_EQ(std::count(literal.begin(), literal.end(), 1), 0);
  EXPECT_EQ(tok->decode(literal), "<s>Hi</s>");
}

TEST(SpmTokenizer, StreamerOutputEqualsDecode) {
  auto tok = load_tokenizer(tok512_path());
  for (const std::string& text : {std::string(kLily), std::string(" two  spaces\nand a newline"),
                                 std::string("日本 \xF0\x9F\x99\x82 done")}) {
    auto ids = tok->encode(text, {.add_bos = true});
    ids.push_back(tok->eos_id());
    TextStreamer streamer(*tok);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = streamer.put(id);
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "a partial character escaped early";
      streamed += piece;
    }
    streamed += streamer.flush();
    EXPECT_EQ(streamed, tok->decode(ids)) << text;
  }
  // Partial bytes are held back until the character completes.
  TextStreamer streamer(*tok);
  EXPECT_EQ(streamer.put(tok->token_id("<0xF0>")), "");
  EXPECT_EQ(streamer.put(tok->token_id("<0x9F>")), "");
  EXPECT_EQ(streamer.put(tok->token_id("<0x99>")), "");
  EXPECT_EQ(streamer.put(tok->token_id("<0x82>")), "\xF0\x9F\x99\x82");
  EXPECT_EQ(streamer.put(tok->token_id("<0xE6>")), "");
  EXPECT_EQ(streamer.flush(), "\xEF\xBF\xBD");  // an unfinished character at the end
}

TEST(SpmTokenizer, HfJsonRoundTripEncodesIdentically) {
  auto tok = load_tokenizer(tok512_path());
  const auto j = tok->to_hf_json();
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  // The best-scored piece (id 259, "▁t") makes the first merge.
  EXPECT_EQ(j["model"]["merges"][0], "\xE2\x96\x81 t");
  EXPECT_EQ(j["added_tokens"].size(), 3u);  // <unk> <s> </s>
  // The HF form merges by rank instead of by score; both must give the same ids.
  auto hf = tokenizer_from_hf_json(j, tok->hf_tokenizer_config(), "exported tok512");
  EXPECT_EQ(hf->vocab_size(), 512);
  EXPECT_EQ(hf->bos_id(), 1);
  EXPECT_EQ(hf->eos_id(), 2);
  EXPECT_TRUE(hf->add_bos_default());
  const std::string shakespeare = read_file(test::data_dir() / "tinyshakespeare" / "input.txt").substr(0, 20000);
  size_t lines = 0;
  for (size_t pos = 0, end; (end = shakespeare.find('\n', pos)) != std::string::npos; pos = end + 1, ++lines) {
    const std::string line = shakespeare.substr(pos, end - pos);
    ASSERT_EQ(hf->encode(line), tok->encode(line)) << line;
    ASSERT_EQ(hf->decode(hf->encode(line)), line);
  }
  EXPECT_GT(lines, 500u);
  EXPECT_EQ(hf->encode(kLily, {.add_bos = true}), tok->encode(kLily, {.add_bos = true}));

  const auto cfg = tok->hf_tokenizer_config(256);
  EXPECT_EQ(cfg["tokenizer_class"], "LlamaTokenizerFast");
  EXPECT_EQ(cfg["bos_token"], "<s>");
  EXPECT_EQ(cfg["eos_token"], "</s>");
  EXPECT_EQ(cfg["add_bos_token"], true);
  EXPECT_EQ(cfg["model_max_length"], 256);

  // The newer Llama layout: no normalizer, a Metaspace pre-tokenizer does the same job.
  auto metaspace = j;
  metaspace["normalizer"] = nullptr;
  metaspace["pre_tokenizer"] = {
      {"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
  auto ms = tokenizer_from_hf_json(metaspace, nullptr, "metaspace");
  EXPECT_EQ(ms->encode(kLily), tok->encode(kLily));
  EXPECT_EQ(ms->decode(ms->encode(kLily)), kLily);
  metaspace["pre_tokenizer"]["split"] = true;
  EXPECT_THROW(tokenizer_from_hf_json(metaspace, nullptr, "metaspace"), Error);

  // tokenizer_config.json wins over the post-processor, and tokens may be objects.
  auto no_bos = tokenizer_from_hf_json(j, {{"add_bos_token", false}, {"eos_token", {{"content", "</s>"}}}}, "x");
  EXPECT_FALSE(no_bos->add_bos_default());
  EXPECT_EQ(no_bos->eos_id(), 2);
}

TEST(SpmTokenizer, TruncatedFileIsAnErrorNamingIt) {
  const std::string data = read_file(tok512_path());
  test::TempDir dir;
  for (size_t keep : {data.size() - 3, size_t{2}, size_t{4 + 8 + 2}}) {
    const auto path = dir / ("tok_" + std::to_string(keep) + ".bin");
    write_file_atomic(path, data.substr(0, keep));
    try {
      load_tokenizer(path);
      FAIL() << "no error for a file cut to " << keep << " bytes";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
  }
}

TEST(SpmTokenizer, MissingOrUnknownPathsAreErrors) {
  test::TempDir dir;
  for (const auto& path : {dir / "nope.bin", dir.path, dir / "x.txt"}) {
    if (path.extension() == ".txt") write_file_atomic(path, "hello");
    try {
      load_tokenizer(path);
      FAIL() << path;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace rlhf
