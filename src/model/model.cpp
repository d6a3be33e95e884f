#include "model/model.h"

#include "core/error.h"

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
  auto files = read_model_files(path, options.tokenizer);
  if (!options.tokenizer.empty()) files.tokenizer = load_tokenizer(options.tokenizer);
  LoadedModel out;
  out.config = files.config;
  out.model = Transformer(files.config);
  out.model->load_weights(files.weights, path.string());
  out.model->to(device, dtype);
  out.model->eval();
  out.tokenizer = std::move(files.tokenizer);
  return out;
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

}  // namespace rlhf
