// The tokenizers the model readers build: GGUF metadata and llama2.c's tok512.bin must give
// the same tokenizer for stories260K, and a Hugging Face folder written by write_hf_dir must
// read back with the same weights, config and tokenizer. Needs the real tokenizer module.
#include "core/error.h"
#include "formats/formats.h"
#include "test_util.h"

namespace rlhf {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kTexts = {
    "Once upon a time, there was a little girl named Lily.",
    "Hello world",
    "  two leading spaces,\nnewlines\n\nand tabs\t!",
    "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80",  // bytes outside the 512-token vocabulary
    "",
};

void expect_same_tokenizer(const Tokenizer& a, const Tokenizer& b) {
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.bos_id(), b.bos_id());
  EXPECT_EQ(a.eos_id(), b.eos_id());
  for (const std::string& text : kTexts) {
    SCOPED_TRACE(text);
    for (bool bos : {false, true}) {
      EncodeOptions opt;
      opt.add_bos = bos;
      std::vector<int32_t> ids = a.encode(text, opt);
      EXPECT_EQ(ids, b.encode(text, opt));
      if (!bos) {  // llama2.c tokenizer files store BOS as plain text "\n<s>\n"
        EXPECT_EQ(a.decode(ids), b.decode(ids));
      }
    }
  }
}

fs::path stories() { return test::data_dir() / "stories260K"; }

TEST(ModelTokenizerIo, GgufAndLlama2cTokenizersAgree) {
  ModelFiles g = read_gguf(stories() / "stories260K.gguf");
  ModelFiles b = read_llama2c(stories() / "stories260K.bin", stories() / "tok512.bin");
  ASSERT_TRUE(g.tokenizer && b.tokenizer);
  // "▁Once", "▁upon", "▁a", "▁time": the start of llama2.c's reference story.
  EXPECT_EQ(g.tokenizer->encode("Once upon a time"), (std::vector<int32_t>{403, 407, 261, 378}));
  EXPECT_EQ(g.tokenizer->bos_id(), 1);
  EXPECT_EQ(g.tokenizer->eos_id(), 2);
  expect_same_tokenizer(*g.tokenizer, *b.tokenizer);

  // Found beside the checkpoint without being named.
  ModelFiles sibling = read_llama2c(stories() / "stories260K.bin");
  expect_same_tokenizer(*sibling.tokenizer, *b.tokenizer);
  // An explicit tokenizer replaces the one in the GGUF metadata.
  ModelFiles over = read_model_files(stories() / "stories260K.gguf", stories() / "tok512.bin");
  expect_same_tokenizer(*over.tokenizer, *g.tokenizer);
}

TEST(ModelTokenizerIo, HfFolderRoundTrip) {
  test::TempDir dir;
  ModelFiles g = read_gguf(stories() / "stories260K.gguf");
  write_hf_dir(dir / "hf", g.config, g.weights, g.tokenizer.get());
  EXPECT_TRUE(fs::exists(dir / "hf" / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir / "hf" / "tokenizer_config.json"));
  ModelFiles back = read_hf_dir(dir / "hf");
  EXPECT_EQ(back.config.to_hf_json(), g.config.to_hf_json());
  ASSERT_EQ(back.weights.size(), g.weights.size());
  for (const auto& [name, t] : g.weights) EXPECT_TRUE(torch::equal(back.weights.at(name), t)) << name;
  ASSERT_TRUE(back.tokenizer);
  expect_same_tokenizer(*back.tokenizer, *g.tokenizer);
  EXPECT_EQ(back.tokenizer->add_bos_default(), g.tokenizer->add_bos_default());
}

}  // namespace
}  // namespace rlhf
