// rlhf lora merge: a base model and a LoRA adapter in PEFT's layout (from our trainers'
// RUN_DIR/adapter, or from peft) -> one model in the Hugging Face layout, as peft's
// merge_and_unload() gives it.
#include <iostream>

#include "commands.h"
#include "formats/formats.h"
#include "model/lora.h"
#include "model/model.h"

namespace rlhf::cli {

void add_lora(CLI::App& app) {
  auto* lora = app.add_subcommand("lora", "LoRA adapters (PEFT layout): merge one into its base model");
  lora->require_subcommand(1);
  struct Args { std::string base, adapter, out, tokenizer, dtype = "float32"; };
  auto args = std::make_shared<Args>();
  auto* cmd = lora->add_subcommand("merge", "Base model + LoRA adapter -> the merged model (Hugging Face layout)");
  cmd->add_option("--base,-b", args->base, "Base model: HF folder, .gguf or llama2.c .bin")->required();
  cmd->add_option("--adapter,-a", args->adapter, "Adapter folder: adapter_config.json + adapter_model.safetensors")
      ->required();
  cmd->add_option("--out,-o", args->out, "Destination folder (Hugging Face layout), written atomically file by file")
      ->required();
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for bases without one");
  cmd->add_option("--dtype", args->dtype, "Output dtype: float32 or bfloat16")->capture_default_str();
  cmd->callback([args] {
    const auto dtype = parse_dtype(args->dtype);  // a bad value fails before anything is read
    auto lm = load_model_with_adapter(args->base, args->adapter, {.tokenizer = args->tokenizer});
    auto weights = merged_weights(*lm.model);
    for (auto& [name, t] : weights) t = t.to(dtype);
    write_hf_dir(args->out, lm.config, weights, lm.tokenizer.get());
    const auto& c = lm.model->lora();
    std::cerr << "wrote " << args->out << " (rank-" << c.r << " adapters on " << c.target_modules.size()
              << " module kinds merged; " << lm.config.num_parameters() << " parameters)\n";
  });
}

}  // namespace rlhf::cli
