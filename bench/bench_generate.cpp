// Generation throughput of rlhf.cpp: tokens/s for each batch size, as one JSON line each,
// with the bytes of weight matrices one decoding step reads and those read per second.
// Driven by bench/generate_vs_transformers.py, which runs transformers on the same work.
//   bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...] [--weights auto|f32|bf16|q8_0]
#include <algorithm>
#include <chrono>
#include <iostream>

#include "generate/generator.h"
#include "model/model.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  rlhf::LoadOptions load;  // float32 unless --weights says otherwise, as before
  if (auto it = std::find(args.begin(), args.end(), "--weights"); it != args.end() && it + 1 != args.end()) {
    load.weights = *(it + 1);
    args.erase(it, it + 2);
  }
  if (args.size() < 3) {
    std::cerr << "usage: bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...] [--weights auto|f32|bf16|q8_0]\n";
    return 2;
  }
  try {
    auto lm = rlhf::load_model(args[0], load);
    const int64_t weight_bytes = lm.model->matrix_bytes();
    rlhf::GenerateOptions opt;
    opt.max_new_tokens = std::stoi(args[1]);
    opt.sampling.temperature = 1.0f;  // plain sampling, as transformers' do_sample with top_k=0
    opt.stop_at_eos = false;          // every sequence runs the full length on both sides
    rlhf::EncodeOptions enc;
    enc.add_bos = true;
    auto prompt = lm.tokenizer->encode("Once upon a time", enc);
    for (size_t a = 2; a < args.size(); ++a) {
      const int batch = std::stoi(args[a]);
      opt.max_batch = batch;
      std::vector<std::vector<int32_t>> prompts(batch, prompt);
      rlhf::generate(lm.model, *lm.tokenizer, prompts, {.max_new_tokens = 8, .max_batch = batch});  // warm-up
      auto t0 = std::chrono::steady_clock::now();
      auto out = rlhf::generate(lm.model, *lm.tokenizer, prompts, opt);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      size_t n = 0;
      for (const auto& g : out) n += g.tokens.size();
      const double steps_per_s = double(n) / batch / s;  // one step decodes every row
      std::cout << nlohmann::json{{"batch", batch},
                                  {"tokens", n},
                                  {"seconds", s},
                                  {"tokens_per_s", n / s},
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
