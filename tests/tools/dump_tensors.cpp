// Test tool for the Python cross-checks: reads a model with read_model_files and either dumps
// its canonical tensors (plus the config, as JSON metadata "config") to a safetensors file,
// or writes it back out as a Hugging Face folder with write_hf_dir.
//   rlhf_dump_tensors MODEL OUT.safetensors [--tokenizer PATH]
//   rlhf_dump_tensors MODEL --export-hf DIR [--tokenizer PATH] [--no-tokenizer] [--bf16]
#include <cstdio>
#include <string>

#include "core/error.h"
#include "formats/formats.h"
#include "formats/safetensors.h"

int main(int argc, char** argv) {
  std::string model, out, export_dir, tokenizer;
  bool no_tokenizer = false, bf16 = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--export-hf" && i + 1 < argc) export_dir = argv[++i];
    else if (a == "--tokenizer" && i + 1 < argc) tokenizer = argv[++i];
    else if (a == "--no-tokenizer") no_tokenizer = true;
    else if (a == "--bf16") bf16 = true;
    else if (model.empty()) model = a;
    else if (out.empty()) out = a;
    else {
      std::fprintf(stderr, "usage: rlhf_dump_tensors MODEL (OUT.safetensors | --export-hf DIR) "
                           "[--tokenizer PATH] [--no-tokenizer] [--bf16]\n");
      return 2;
    }
  }
  if (model.empty() || (out.empty() == export_dir.empty())) {
    std::fprintf(stderr, "usage: rlhf_dump_tensors MODEL (OUT.safetensors | --export-hf DIR)\n");
    return 2;
  }
  try {
    rlhf::ModelFiles m = rlhf::read_model_files(model, tokenizer);
    if (bf16)
      for (auto& [name, t] : m.weights) t = t.to(torch::kBFloat16);
    if (!export_dir.empty()) {
      rlhf::write_hf_dir(export_dir, m.config, m.weights, no_tokenizer ? nullptr : m.tokenizer.get());
    } else {
      rlhf::write_safetensors(out, m.weights, {{"format", "pt"}, {"config", m.config.to_hf_json().dump()}});
    }
  } catch (const rlhf::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
