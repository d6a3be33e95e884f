// A model whose text is not valid UTF-8 where it is cut: a tiny Llama with stories260K's
// tokenizer (tok512, which has byte-fallback tokens such as <0xE2>) whose continuation of any
// prompt is the bytes of "€" (E2 82 AC), one byte token each, over and over. Greedy it is
// exact; sampled, the other tokens are e^-28 times less likely. Cut after 3n+1 or 3n+2
// tokens, the text ends inside a character, as a real model's text can.
#pragma once
#include <filesystem>

#include "formats/formats.h"
#include "test_util.h"

namespace rlhf::test {

struct EuroModel {
  int32_t e2, x82, xac;  // the ids of <0xE2>, <0x82>, <0xAC>
};

// Writes the model as a Hugging Face folder (config.json, model.safetensors, tokenizer.json).
inline EuroModel write_euro_model(const std::filesystem::path& dir) {
  auto tok = load_tokenizer(data_dir() / "stories260K" / "tok512.bin");
  EuroModel m{tok->token_id("<0xE2>"), tok->token_id("<0x82>"), tok->token_id("<0xAC>")};
  EXPECT_TRUE(m.e2 >= 0 && m.x82 >= 0 && m.xac >= 0) << "tok512.bin lacks the byte tokens";
  ModelConfig c;
  c.vocab_size = tok->vocab_size();
  c.hidden_size = 8;
  c.num_layers = 1;
  c.num_heads = c.num_kv_heads = 2;
  c.head_dim = 4;
  c.intermediate_size = 8;
  c.max_position_embeddings = 64;
  c.eos_token_ids = {2};
  c.tie_word_embeddings = false;
  // Every block adds zero (its output projections are zero), so the last position's hidden
  // state is its token's embedding: channel 0 for E2, 1 for 82, 2 for AC, 3 for any other.
  // lm_head reads the next token off that channel: other/AC -> E2 -> 82 -> AC.
  TensorMap w;
  for (const auto& [name, shape] : canonical_shapes(c))
    w[name] = name.ends_with("norm.weight") ? torch::ones(shape) : torch::zeros(shape);
  torch::Tensor embed = w["model.embed_tokens.weight"], head = w["lm_head.weight"];  // (V, C)
  embed.select(1, 3).fill_(1);
  const std::pair<int32_t, int64_t> channels[] = {{m.e2, 0}, {m.x82, 1}, {m.xac, 2}};
  for (const auto& [id, channel] : channels) {
    embed[id][3] = 0;
    embed[id][channel] = 1;
  }
  head[m.e2][3] = 10;
  head[m.e2][2] = 10;
  head[m.x82][0] = 10;
  head[m.xac][1] = 10;
  write_hf_dir(dir, c, w, tok.get());
  return m;
}

}  // namespace rlhf::test
