// Generation throughput of rlhf.cpp: tokens/s for each batch size, as one JSON line each,
// with the bytes of weight matrices one decoding step reads and those read per second.
// Driven by bench/generate_vs_transformers.py and bench/shapes_vs_peers.py, which run the
// peers on the same work.
//   bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...] [--prompt-tokens N] [--device cpu|cuda]
//                  [--weights auto|f32|bf16|q8_0] [--profile]
// Without --prompt-tokens every row's prompt is "Once upon a time"; with it, N token ids drawn
// at random (seed 0) from the tokenizer's range, the same for every row. Each line also gives
// the prefill time of the batch's prompts alone (a run with one new token). --profile prints
// each operator's self time per new token of the timed run to stderr (libtorch's profiler;
// our kernels appear as rlhf::packed_linear and rlhf::decode_step_cpu), prefill included.
#include <algorithm>
#include <chrono>
#include <iostream>

#include "generate/generator.h"
#include "model/model.h"
#include "train/profile.h"

int main(int argc, char** argv) {
  std::vector<std::string> pos;
  int64_t prompt_tokens = 0;
  bool profile = false;
  rlhf::LoadOptions load;  // float32 unless --weights says otherwise
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--prompt-tokens" && a + 1 < argc) prompt_tokens = std::stol(argv[++a]);
    else if (arg == "--device" && a + 1 < argc) load.device = argv[++a];
    else if (arg == "--weights" && a + 1 < argc) load.weights = argv[++a];
    else if (arg == "--profile") profile = true;
    else pos.push_back(arg);
  }
  if (pos.size() < 3) {
    std::cerr << "usage: bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...] [--prompt-tokens N] [--device D] "
                 "[--weights auto|f32|bf16|q8_0] [--profile]\n";
    return 2;
  }
  try {
    auto lm = rlhf::load_model(pos[0], load);
    const int64_t weight_bytes = lm.model->matrix_bytes();
    rlhf::GenerateOptions opt;
    opt.max_new_tokens = std::stoi(pos[1]);
    opt.sampling.temperature = 1.0f;  // plain sampling, as transformers' do_sample with top_k=0
    opt.stop_at_eos = false;          // every sequence runs the full length on both sides
    std::vector<int32_t> prompt;
    if (prompt_tokens > 0) {
      torch::manual_seed(0);
      const int64_t hi = std::min<int64_t>(lm.tokenizer->vocab_size(), lm.config.vocab_size);
      auto ids = torch::randint(3, hi, {prompt_tokens}, torch::kLong);
      for (int64_t i = 0; i < prompt_tokens; ++i) prompt.push_back(static_cast<int32_t>(ids[i].item<int64_t>()));
    } else {
      rlhf::EncodeOptions enc;
      enc.add_bos = true;
      prompt = lm.tokenizer->encode("Once upon a time", enc);
    }
    auto seconds = [](auto t0) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    for (size_t a = 2; a < pos.size(); ++a) {
      const int batch = std::stoi(pos[a]);
      opt.max_batch = batch;
      std::vector<std::vector<int32_t>> prompts(batch, prompt);
      rlhf::generate(lm.model, *lm.tokenizer, prompts, {.max_new_tokens = 8, .max_batch = batch});  // warm-up
      auto t0 = std::chrono::steady_clock::now();
      rlhf::generate(lm.model, *lm.tokenizer, prompts, {.max_new_tokens = 1, .max_batch = batch});
      const double prefill_s = seconds(t0);
      if (profile) rlhf::start_profile();
      t0 = std::chrono::steady_clock::now();
      auto out = rlhf::generate(lm.model, *lm.tokenizer, prompts, opt);
      const double s = seconds(t0);
      if (profile) {
        std::cerr << "batch " << batch << ", per new token: ";
        rlhf::stop_profile(std::cerr, opt.max_new_tokens);
      }
      size_t n = 0;
      for (const auto& g : out) n += g.tokens.size();
      const double steps_per_s = double(n) / batch / s;  // one step decodes every row
      std::cout << nlohmann::json{{"batch", batch},
                                  {"tokens", n},
                                  {"seconds", s},
                                  {"tokens_per_s", n / s},
                                  {"prompt_tokens", prompt.size()},
                                  {"prefill_s", prefill_s},
                                  {"weights", rlhf::weight_format_name(lm.model->matrix_format())},
                                  {"weight_bytes", weight_bytes},
                                  {"weight_gb_per_s", weight_bytes * steps_per_s / 1e9}}
                       .dump()
                << std::endl;
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_generate: " << e.what() << "\n";
    return 1;
  }
}
