// Chat templates: a conversation rendered as the text a chat model was trained on. The text
// holds special tokens as their strings ("<s>", "<|im_start|>"); encode it with
// parse_special=true and add_bos=false, as transformers' apply_chat_template does.
#pragma once
#include <string>
#include <vector>

namespace rlhf {

class Tokenizer;

struct ChatMessage {
  std::string role;     // "system", "user" or "assistant"
  std::string content;
};

// Renders `messages` with the template `name`:
//   "llama2": <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
//             (Llama-2-chat; contents are trimmed, roles must alternate user/assistant after an
//             optional system message; BOS/EOS strings come from `tok` when given)
//   "llama3": <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> ...
//             (Llama-3-Instruct; contents are trimmed)
//   "chatml": <|im_start|>{role}\n{content}<|im_end|>\n ...
//   "hh":     \n\nHuman: {user}\n\nAssistant: {assistant} ... (Anthropic HH-RLHF; a system
//             message is written first, as plain text)
// add_generation_prompt ends the text where the assistant's reply starts. Throws Error for
// an unknown name (listing the known ones) or a conversation the template cannot express.
std::string apply_chat_template(const std::string& name, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const Tokenizer* tok = nullptr);

std::vector<std::string> chat_template_names();

// The built-in template a model's own Jinja chat_template (tokenizer_config.json) writes, told
// by its markers (<|start_header_id|> -> llama3, <|im_start|> -> chatml, [INST] -> llama2,
// Human:/Assistant: -> hh); "" when none matches. Without a Jinja engine this is how a
// model's template is honoured.
std::string recognize_chat_template(const std::string& jinja);

// Text that ends an assistant turn in the template, beyond the tokenizer's EOS: a token's
// string (matched as a token where the vocabulary has it) or plain text ("\n\nHuman:").
std::vector<std::string> chat_template_stops(const std::string& name);

}  // namespace rlhf
