// The vocabulary a tokenizer was built from, for writers that store a tokenizer in their own
// form rather than as tokenizer.json (GGUF metadata: formats/gguf_writer.cpp). Types are
// filled in (every entry has one), ids are the tokenizer's.
#pragma once
#include "tokenizer/tokenizer.h"

namespace rlhf {

const SpmVocab* spm_vocab_of(const Tokenizer& tok);          // null unless SentencePiece-style BPE
const ByteBpeVocab* byte_bpe_vocab_of(const Tokenizer& tok);  // null unless byte-level BPE

}  // namespace rlhf
