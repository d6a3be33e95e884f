// The chat templates of the model families we train (Llama-2-chat, ChatML, Anthropic HH),
// written out by hand: each is a few lines, and a Jinja engine would be a dependency for that.
#include "tokenizer/chat_template.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace rlhf {
namespace {

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// Mirrors the chat_template of meta-llama/Llama-2-7b-chat-hf.
std::string llama2(const std::vector<ChatMessage>& messages, const Tokenizer* tok) {
  auto text_of = [&](int32_t id, const char* fallback) {
    return tok && id >= 0 ? tok->token_text(id) : std::string(fallback);
  };
  const std::string bos = text_of(tok ? tok->bos_id() : -1, "<s>");
  const std::string eos = text_of(tok ? tok->eos_id() : -1, "</s>");
  size_t first = 0;
  std::string system;
  if (!messages.empty() && messages[0].role == "system") {
    system = messages[0].content;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_turn = (i - first) % 2 == 0;
    check(m.role == (user_turn ? "user" : "assistant"),
          "llama2 chat template: message " + std::to_string(i) + " has role '" + m.role +
              "'; roles must alternate user/assistant after an optional system message");
    if (user_turn) {
      std::string content;
      if (i == first && first == 1) content.append("<<SYS>>\n").append(system).append("\n<</SYS>>\n\n");
      content += m.content;
      out.append(bos).append("[INST] ").append(strip(content)).append(" [/INST]");
    } else {
      out.append(" ").append(strip(m.content)).append(" ").append(eos);
    }
  }
  return out;  // a generation prompt needs nothing more: the reply follows " [/INST]"
}

std::string chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// Anthropic's HH-RLHF dialogue format, as in the dataset's chosen/rejected strings.
std::string hh(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "system" && i == 0)
      out += m.content;
    else if (m.role == "user")
      out += "\n\nHuman: " + m.content;
    else if (m.role == "assistant")
      out += "\n\nAssistant: " + m.content;
    else
      throw Error("hh chat template: message " + std::to_string(i) + " has role '" + m.role +
                  "' (expected user or assistant, or system first)");
  }
  if (add_generation_prompt) out += "\n\nAssistant:";
  return out;
}

// Mirrors the chat_template of meta-llama/Meta-Llama-3-8B-Instruct (contents trimmed).
std::string llama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt, const Tokenizer* tok) {
  std::string out = tok && tok->bos_id() >= 0 ? tok->token_text(tok->bos_id()) : "<|begin_of_text|>";
  for (const ChatMessage& m : messages)
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + strip(m.content) + "<|eot_id|>";
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

}  // namespace

std::vector<std::string> chat_template_names() { return {"llama2", "llama3", "chatml", "hh"}; }

std::string recognize_chat_template(const std::string& jinja) {
  if (jinja.find("<|start_header_id|>") != std::string::npos) return "llama3";
  if (jinja.find("<|im_start|>") != std::string::npos) return "chatml";
  if (jinja.find("[INST]") != std::string::npos) return "llama2";
  if (jinja.find("Human:") != std::string::npos && jinja.find("Assistant:") != std::string::npos) return "hh";
  return "";
}

std::vector<std::string> chat_template_stops(const std::string& name) {
  if (name == "llama3") return {"<|eot_id|>"};
  if (name == "chatml") return {"<|im_end|>"};
  if (name == "hh") return {"\n\nHuman:"};
  return {};  // llama2 ends its turn with EOS
}

std::string apply_chat_template(const std::string& name, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const Tokenizer* tok) {
  if (name == "llama2") return llama2(messages, tok);
  if (name == "llama3") return llama3(messages, add_generation_prompt, tok);
  if (name == "chatml") return chatml(messages, add_generation_prompt);
  if (name == "hh") return hh(messages, add_generation_prompt);
  std::string known;
  for (const auto& n : chat_template_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("unknown chat template '" + name + "' (known: " + known + ")");
}

}  // namespace rlhf
