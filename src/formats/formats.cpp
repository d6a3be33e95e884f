// Choosing a reader by what a path is, and checking a set of weights against a config.
#include "formats/formats.h"

#include "core/error.h"
#include "formats/binary_file.h"

namespace rlhf {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// "a, b, c and 12 more"
std::string name_list(const std::vector<std::string>& names) {
  std::string out;
  const size_t shown = std::min<size_t>(names.size(), 5);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

}  // namespace

void validate_weights(const ModelConfig& config, const TensorMap& weights, const std::string& source) {
  const TensorShapes expected = canonical_shapes(config);
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, shape] : expected) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      missing.push_back(name);
      continue;
    }
    const torch::Tensor& t = it->second;
    if (!t.defined()) throw Error(source + ": tensor " + name + " is empty (undefined)");
    if (t.sizes().vec() != shape)
      throw Error(source + ": tensor " + name + " has shape " + shape_str(t.sizes().vec()) + ", expected " +
                  shape_str(shape));
    if (!t.is_floating_point())
      throw Error(source + ": tensor " + name + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                  ", expected a floating-point type");
  }
  for (const auto& [name, t] : weights)
    if (!expected.count(name)) unexpected.push_back(name);
  if (missing.empty() && unexpected.empty()) return;
  std::string msg = source + ": the weights do not match a " + config.architecture + " with this config:";
  if (!missing.empty()) msg += " missing tensor(s) " + name_list(missing) + ";";
  if (!unexpected.empty()) msg += " unexpected tensor(s) " + name_list(unexpected) + ";";
  msg.pop_back();
  throw Error(msg);
}

ModelFiles read_model_files(const std::filesystem::path& path, const std::filesystem::path& tokenizer_path,
                            bool keep_stored) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) throw Error(path.string() + ": no such file or folder");
  ModelFiles out;
  if (fs::is_directory(path)) {
    out = read_hf_dir(path);
  } else {
    // Sniff the first bytes: extensions lie more often than magic numbers.
    std::string head;
    {
      MappedFile f(path);
      head.assign(reinterpret_cast<const char*>(f.data()), std::min<uint64_t>(f.size(), 4));
    }
    const std::string ext = path.extension().string();
    if (head == "GGUF" || ext == ".gguf") {
      out = read_gguf(path, keep_stored);
    } else if (head.rfind("PK", 0) == 0) {
      throw Error(path.string() + ": a PyTorch pickle (zip) checkpoint, which is not supported; save the model "
                  "as safetensors (save_pretrained) or convert it to GGUF");
    } else if (ext == ".bin") {
      return read_llama2c(path, tokenizer_path);
    } else {
      throw Error(path.string() + ": cannot tell the model format (expected a Hugging Face folder, a .gguf file "
                  "or a llama2.c .bin checkpoint)");
    }
  }
  // An explicit tokenizer replaces the one the model files carry.
  if (!tokenizer_path.empty()) out.tokenizer = load_tokenizer(tokenizer_path);
  return out;
}

}  // namespace rlhf
