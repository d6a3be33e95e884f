#include "model/model.h"

#include "core/error.h"
#include "formats/peft.h"

namespace rlhf {

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    check(torch::cuda::is_available(),
          "device '" + name + "' requested but no CUDA device is available (use --device cpu)");
    torch::Device d(name);
    check(d.index() < static_cast<int>(torch::cuda::device_count()),
          "device '" + name + "': only " + std::to_string(torch::cuda::device_count()) + " CUDA devices");
    return d;
  }
  throw Error("unknown device '" + name + "' (expected cpu, cuda or cuda:N)");
}

torch::Dtype parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  throw Error("unsupported dtype '" + name + "' (expected float32 or bfloat16)");
}

LoadedModel load_model(const std::filesystem::path& path, const LoadOptions& options) try {
  const auto device = parse_device(options.device);
  const auto dtype = parse_dtype(options.dtype);
  // Packed matrices run on our CPU kernels with float32 activations; "auto" falls back to
  // float32 elsewhere, an explicit format is an error there.
  const bool can_pack = device.is_cpu() && dtype == torch::kFloat32;
  const bool auto_format = options.weights == "auto";
  if (!auto_format && parse_weight_format(options.weights) != WeightFormat::F32)
    check(can_pack, "--weights " + options.weights + " needs --device cpu and --dtype float32");
  // Q8_0 blocks are kept as stored when they are wanted as Q8_0 (or as stored).
  const bool keep_stored = can_pack && (auto_format || options.weights == "q8_0");
  auto files = read_model_files(path, options.tokenizer, keep_stored);
  if (!options.tokenizer.empty()) files.tokenizer = load_tokenizer(options.tokenizer);
  WeightFormat format = WeightFormat::F32;
  if (!auto_format) {
    format = parse_weight_format(options.weights);
  } else if (can_pack) {  // as stored: Q8_0 blocks, else the embedding's format stands for the matrices'
    auto embed = files.weights.find("model.embed_tokens.weight");
    if (!files.packed.empty()) format = WeightFormat::Q8_0;
    else if (embed != files.weights.end() && embed->second.scalar_type() == torch::kBFloat16) format = WeightFormat::BF16;
  }
  LoadedModel out;
  out.config = files.config;
  out.model = Transformer(files.config, format);
  out.model->load_weights(files.weights, path.string(), files.packed);
  files.weights.clear();  // the float copies go before the next allocation
  files.packed.clear();
  if (!out.model->is_packed()) out.model->to(device, dtype);
  out.model->eval();
  out.tokenizer = std::move(files.tokenizer);
  return out;
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

LoadedModel load_model_with_adapter(const std::filesystem::path& path, const std::filesystem::path& adapter_dir,
                                    const LoadOptions& options) {
  auto adapter = read_peft_adapter(adapter_dir);
  check(adapter.task_type == "CAUSAL_LM",
        adapter_dir.string() + ": a " + adapter.task_type +
            " adapter (a reward or value model's); only language-model (CAUSAL_LM) adapters are loaded onto a base");
  LoadOptions f32 = options;
  f32.weights = "f32";
  auto lm = load_model(path, f32);
  attach_lora(*lm.model, adapter.config);
  load_lora_weights(*lm.model, adapter.weights, (adapter_dir / "adapter_model.safetensors").string());
  return lm;
}

}  // namespace rlhf
