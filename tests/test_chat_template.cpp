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

TEST(ChatTemplate, Llama3MatchesLlama3Instruct) {
  EXPECT_EQ(apply_chat_template("llama3", kConversation, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is RLHF?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(chat_template_stops("llama3"), std::vector<std::string>{"<|eot_id|>"});
}

// Opening lines of the chat_template fields of real tokenizer_config.json files.
TEST(ChatTemplate, RecognisesModelsOwnTemplates) {
  EXPECT_EQ(recognize_chat_template("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                                    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"),
            "llama3");
  EXPECT_EQ(recognize_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                                    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"),
            "chatml");
  EXPECT_EQ(recognize_chat_template("{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] "
                                    "+ ' [/INST]' }}"),
            "llama2");
  EXPECT_EQ(recognize_chat_template("{% for message in messages %}{{ message['content'] }}{% endfor %}"), "");
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
