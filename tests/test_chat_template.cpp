// Chat templates against hand-written renderings of one two-turn conversation.
#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."},
    {"user", "Hi!"},
    {"assistant", "Hello."},
    {"user", "What is RLHF?"},
};

TEST(ChatTemplate, Llama2MatchesLlama2Chat) {
  EXPECT_EQ(apply_chat_template("llama2", kConversation, true),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] What is RLHF? [/INST]");
  // Without a system message, and trimmed contents.
  EXPECT_EQ(apply_chat_template("llama2", {{"user", " Hi! "}, {"assistant", "Hello.\n"}}, false),
            "<s>[INST] Hi! [/INST] Hello. </s>");
  EXPECT_THROW(apply_chat_template("llama2", {{"user", "a"}, {"user", "b"}}, true), Error);
}

TEST(ChatTemplate, Llama2EncodesBosAndEosAsSpecialTokens) {
  auto tok = load_tokenizer(test::data_dir() / "stories260K" / "tok512.bin");
  const std::string text = apply_chat_template("llama2", {{"user", "Hi"}, {"assistant", "Yo"}}, false, tok.get());
  const auto ids = tok->encode(text, {.add_bos = false, .parse_special = true});
  // Llama-2-chat's training tokenization: BOS, the turn encoded as text (dummy prefix
  // included: "[INST]" starts with "▁"), EOS.
  std::vector<int32_t> expected = {tok->bos_id()};
  for (int32_t id : tok->encode("[INST] Hi [/INST] Yo ")) expected.push_back(id);
  expected.push_back(tok->eos_id());
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tok->token_text(ids[1]).rfind("\xE2\x96\x81", 0), 0u);
}

TEST(ChatTemplate, ChatML) {
  EXPECT_EQ(apply_chat_template("chatml", kConversation, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n"
            "<|im_start|>user\nWhat is RLHF?<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template("chatml", {{"user", "Hi!"}}, false), "<|im_start|>user\nHi!<|im_end|>\n");
}

TEST(ChatTemplate, AnthropicHH) {
  EXPECT_EQ(apply_chat_template("hh", {kConversation.begin() + 1, kConversation.end()}, true),
            "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: What is RLHF?\n\nAssistant:");
  EXPECT_EQ(apply_chat_template("hh", {{"user", "Hi!"}, {"assistant", "Hello."}}, false),
            "\n\nHuman: Hi!\n\nAssistant: Hello.");
  EXPECT_THROW(apply_chat_template("hh", {{"tool", "x"}}, false), Error);
}

TEST(ChatTemplate, UnknownNameListsKnownOnes) {
  try {
    apply_chat_template("vicuna", kConversation, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("vicuna"), std::string::npos);
    for (const auto& name : chat_template_names()) EXPECT_NE(msg.find(name), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace rlhf
