// Generation throughput of rlhf.cpp: tokens/s for each batch size, as one JSON line each.
// Driven by bench/generate_vs_transformers.py, which runs transformers on the same work.
//   bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...]
#include <chrono>
#include <iostream>

#include "generate/generator.h"
#include "model/model.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: bench_generate MODEL MAX_NEW_TOKENS BATCH [BATCH...]\n";
    return 2;
  }
  try {
    auto lm = rlhf::load_model(argv[1]);
    rlhf::GenerateOptions opt;
    opt.max_new_tokens = std::stoi(argv[2]);
    opt.sampling.temperature = 1.0f;  // plain sampling, as transformers' do_sample with top_k=0
    opt.stop_at_eos = false;          // every sequence runs the full length on both sides
    rlhf::EncodeOptions enc;
    enc.add_bos = true;
    auto prompt = lm.tokenizer->encode("Once upon a time", enc);
    for (int a = 3; a < argc; ++a) {
      const int batch = std::stoi(argv[a]);
      opt.max_batch = batch;
      std::vector<std::vector<int32_t>> prompts(batch, prompt);
      rlhf::generate(lm.model, *lm.tokenizer, prompts, {.max_new_tokens = 8, .max_batch = batch});  // warm-up
      auto t0 = std::chrono::steady_clock::now();
      auto out = rlhf::generate(lm.model, *lm.tokenizer, prompts, opt);
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      size_t n = 0;
      for (const auto& g : out) n += g.tokens.size();
      std::cout << nlohmann::json{{"batch", batch}, {"tokens", n}, {"seconds", s}, {"tokens_per_s", n / s}}.dump()
                << std::endl;
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_generate: " << e.what() << "\n";
    return 1;
  }
}
