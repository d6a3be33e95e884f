// Direct preference optimization (DPO, and IPO as a loss option): the policy is trained on
// preference pairs against a frozen reference whose log-probabilities are computed once,
// before training, from the starting model.
#pragma once
#include <string>

#include "train/train_loop.h"

namespace rlhf {

struct DpoConfig {
  TrainConfig train;
  std::string ref_model;           // empty: the starting model
  double beta = 0.1;
  double label_smoothing = 0.0;
  std::string loss_type = "sigmoid";
  std::string data_format = "auto";
  bool share_prompt = true;        // chosen and rejected in one row after one prompt (data/collate.h)

  DpoConfig() {
    train.run_dir = "runs/dpo";
    train.lr = 1e-5;
  }
  template <class V>
  void visit(V&& v) {
    visit_train_fields(train, v);
    v("ref_model", ref_model, "Reference model; empty: the starting model (a frozen copy; with LoRA, the model itself with its adapters off)");
    v("beta", beta, "DPO temperature: strength of the implicit KL to the reference");
    v("label_smoothing", label_smoothing, "Assumed label noise (conservative DPO); 0: plain DPO");
    v("loss_type", loss_type, "sigmoid (DPO) or ipo");
    v("data_format", data_format, "auto (by the fields of the first line), preferences or rankings");
    v("share_prompt", share_prompt, "Compute each pair's prompt once for both completions (the same results, fewer tokens); false: a row per completion");
  }
};

// Range checks of every field (an Error naming the field and the value).
void validate(const DpoConfig& c);

Metrics train_dpo(DpoConfig cfg, bool resume, int64_t stop_after = 0);

}  // namespace rlhf
