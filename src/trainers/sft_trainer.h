// Supervised fine-tuning: next-token cross-entropy on completion tokens only (the prompt is
// context, not a target), optionally with several examples packed per row.
#pragma once
#include <string>

#include "train/train_loop.h"

namespace rlhf {

struct SftConfig {
  TrainConfig train;
  std::string chat_template;   // renders `messages` data; empty: data must be prompt/completion
  bool packing = false;

  SftConfig() { train.run_dir = "runs/sft"; }
  template <class V>
  void visit(V&& v) {
    visit_train_fields(train, v);
    v("chat_template", chat_template, "Chat template for `messages` data: llama2, chatml or hh");
    v("packing", packing, "Pack several examples into each max_length row");
  }
};

// Trains and writes RUN_DIR/model (HF layout). `stop_after` > 0: stop (with a checkpoint)
// after that many steps, as an interrupted run would.
Metrics train_sft(SftConfig cfg, bool resume, int64_t stop_after = 0);

}  // namespace rlhf
