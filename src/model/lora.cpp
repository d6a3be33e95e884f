// LoRA adapters on a Transformer's projections: attaching, naming (PEFT's names), loading
// and merging. The forward pass is ProjectionImpl::forward (model/transformer.cpp).
#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "model/transformer.h"

namespace F = torch::nn::functional;

namespace rlhf {

namespace {

thread_local bool t_lora_disabled = false;

const std::vector<std::string> kLayerProjections = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"};

// The HF modules behind one of our projections (its module path, e.g.
// model.layers.0.self_attn.qkv_proj): (name, first row, rows) in the order of its rows.
// The LM head has none: it is never a target.
struct Part {
  std::string name;
  int64_t offset, rows;
};
std::vector<Part> projection_parts(const std::string& path, const ModelConfig& cfg, int64_t out_rows) {
  const std::string leaf = path.substr(path.rfind('.') + 1);
  const int64_t q = cfg.num_heads * cfg.head_dim, kv = cfg.num_kv_heads * cfg.head_dim, I = cfg.intermediate_size;
  if (leaf == "qkv_proj") return {{"q_proj", 0, q}, {"k_proj", q, kv}, {"v_proj", q + kv, kv}};
  if (leaf == "gate_up_proj") return {{"gate_proj", 0, I}, {"up_proj", I, I}};
  if (leaf == "o_proj" || leaf == "up_proj" || leaf == "down_proj") return {{leaf, 0, out_rows}};
  return {};
}

// "model.layers.0.self_attn.qkv_proj" + "q_proj" -> "model.layers.0.self_attn.q_proj"
std::string module_name(const std::string& path, const std::string& part) {
  return path.substr(0, path.rfind('.') + 1) + part;
}

const std::string kPeftPrefix = "base_model.model.";

}  // namespace

std::vector<std::string> parse_lora_targets(const std::string& comma_list) {
  std::vector<std::string> out;
  size_t begin = 0;
  while (begin <= comma_list.size()) {
    size_t end = comma_list.find(',', begin);
    if (end == std::string::npos) end = comma_list.size();
    std::string name = comma_list.substr(begin, end - begin);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (!name.empty()) {
      check(name == "all-linear" || std::count(kLayerProjections.begin(), kLayerProjections.end(), name),
            "lora_target_modules: unknown module '" + name +
                "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)");
      if (!std::count(out.begin(), out.end(), name)) out.push_back(name);
    }
    begin = end + 1;
  }
  check(!out.empty(), "lora_target_modules: no module given (e.g. q_proj,v_proj or all-linear)");
  check(out.size() == 1 || !std::count(out.begin(), out.end(), "all-linear"),
        "lora_target_modules: all-linear stands alone, got '" + comma_list + "'");
  return out;
}

LoraAdapterImpl::LoraAdapterImpl(int64_t in, int64_t offset_, int64_t rows_, const LoraConfig& c,
                                 const torch::TensorOptions& options)
    : offset(offset_), rows(rows_), scale(c.scale()), dropout(c.dropout) {
  lora_A = register_parameter("lora_A", torch::empty({c.r, in}, options));
  lora_B = register_parameter("lora_B", torch::zeros({rows, c.r}, options));
  torch::NoGradGuard no_grad;
  torch::nn::init::kaiming_uniform_(lora_A, std::sqrt(5.0));  // as PEFT (nn.Linear's own init)
}

torch::Tensor LoraAdapterImpl::forward(const torch::Tensor& x) {
  const auto h = dropout > 0 && is_training() ? F::dropout(x, F::DropoutFuncOptions().p(dropout).training(true)) : x;
  return F::linear(F::linear(h, lora_A), lora_B) * scale;
}

torch::Tensor LoraAdapterImpl::delta() const {
  torch::NoGradGuard no_grad;
  return torch::matmul(lora_B.to(torch::kFloat32), lora_A.to(torch::kFloat32)) * scale;
}

LoraDisabled::LoraDisabled() : was_disabled_(t_lora_disabled) { t_lora_disabled = true; }
LoraDisabled::~LoraDisabled() { t_lora_disabled = was_disabled_; }
bool lora_enabled() { return !t_lora_disabled; }

bool is_lora_parameter(const std::string& name) { return name.find(".lora_") != std::string::npos; }

void attach_lora(TransformerImpl& model, const LoraConfig& c) {
  const ModelConfig& cfg = model.config();
  check(c.r > 0, "lora: the rank r must be > 0, got " + std::to_string(c.r));
  check(std::isfinite(c.alpha) && c.alpha > 0, "lora: alpha must be a finite number > 0");
  check(c.dropout >= 0 && c.dropout < 1, "lora: dropout must be in [0, 1)");
  check(model.lora().r == 0, "lora: the model already has adapters");
  check(!model.is_packed(), "lora: the model's weights are packed for inference; load it with --weights f32");
  check(cfg.architecture != "GPT2LMHeadModel",
        "lora: adapters are supported on the Llama family (Llama, Mistral, Qwen2), not on " + cfg.architecture +
            " (its fused Conv1D layout has no PEFT counterpart here)");

  // The targets this model has; all-linear is every one of them.
  std::set<std::string> has = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"};
  if (cfg.mlp == MlpType::SwiGLU) has.insert("gate_proj");
  LoraConfig resolved = c;
  if (c.target_modules == std::vector<std::string>{"all-linear"}) {
    resolved.target_modules.clear();
    for (const auto& name : kLayerProjections)
      if (has.contains(name)) resolved.target_modules.push_back(name);
  }
  check(!resolved.target_modules.empty(), "lora: no target modules");
  for (const auto& t : resolved.target_modules)
    check(has.contains(t), "lora: the model has no module '" + t + "' to adapt");

  const auto children = model.named_children();
  for (const auto& name : resolved.modules_to_save)
    check(children.contains(name) && name != "model", "lora: modules_to_save: the model has no module '" + name + "'");

  // Everything frozen first, then the modules trained whole, then the adapters (trainable).
  for (auto& p : model.parameters()) p.set_requires_grad(false);
  for (const auto& name : resolved.modules_to_save)
    for (auto& p : children[name]->parameters()) p.set_requires_grad(true);
  const std::set<std::string> targets(resolved.target_modules.begin(), resolved.target_modules.end());
  for (const auto& m : model.named_modules()) {
    auto* proj = m.value()->as<ProjectionImpl>();
    if (!proj) continue;
    for (const auto& part : projection_parts(m.key(), cfg, proj->weight.size(0)))
      if (targets.contains(part.name))
        proj->add_lora(part.name, LoraAdapter(proj->weight.size(1), part.offset, part.rows, resolved,
                                              proj->weight.options().requires_grad(false)));
  }
  model.lora_ = resolved;
}

TensorMap lora_weights(TransformerImpl& model) {
  TensorMap out;
  for (const auto& m : model.named_modules()) {
    auto* proj = m.value()->as<ProjectionImpl>();
    if (!proj) continue;
    for (const auto& [target, a] : proj->lora()) {
      const std::string prefix = kPeftPrefix + module_name(m.key(), target);
      out[prefix + ".lora_A.weight"] = a->lora_A;
      out[prefix + ".lora_B.weight"] = a->lora_B;
    }
  }
  const auto children = model.named_children();
  for (const auto& name : model.lora().modules_to_save)
    for (const auto& p : children[name]->named_parameters()) out[kPeftPrefix + name + "." + p.key()] = p.value();
  return out;
}

void load_lora_weights(TransformerImpl& model, const TensorMap& weights, const std::string& source) {
  torch::NoGradGuard no_grad;
  auto params = lora_weights(model);
  auto shape = [](const torch::Tensor& t) {
    std::string s = "[";
    for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
    return s + "]";
  };
  for (auto& [name, p] : params) {
    auto it = weights.find(name);
    check(it != weights.end(), source + ": missing tensor " + name);
    check(it->second.sizes() == p.sizes(),
          source + ": tensor " + name + " has shape " + shape(it->second) + ", expected " + shape(p));
    p.copy_(it->second);
  }
  for (const auto& [name, t] : weights)
    check(params.contains(name), source + ": unexpected tensor " + name + " for these adapters");
}

TensorMap merged_weights(TransformerImpl& model) {
  TensorMap out;
  for (const auto& [name, t] : model.weights()) out[name] = t.detach().to(torch::kCPU);
  for (const auto& m : model.named_modules()) {
    auto* proj = m.value()->as<ProjectionImpl>();
    if (!proj) continue;
    for (const auto& [target, a] : proj->lora()) {
      auto& w = out.at(module_name(m.key(), target) + ".weight");  // (rows, in)
      w = (w.to(torch::kFloat32) + a->delta().to(torch::kCPU)).to(w.scalar_type());  // a new tensor: the model is untouched
    }
  }
  return out;
}

}  // namespace rlhf
