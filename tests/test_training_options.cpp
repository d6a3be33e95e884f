// The training options that trade precision or compute for speed or memory: bf16 mixed
// precision (precision = "bf16": bf16 products under autocast, float32 master weights, logits
// and losses) stays within a stated tolerance of float32 while really computing in bf16, and
// activation checkpointing (checkpoint_activations) gives the same gradients as keeping every
// activation, on every attention path of a training forward.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "core/io.h"
#include "model/autocast.h"
#include "model/transformer.h"
#include "small_training_data.h"
#include "test_util.h"
#include "trainers/dpo_trainer.h"
#include "trainers/ppo_trainer.h"
#include "trainers/reward_trainer.h"
#include "trainers/sft_trainer.h"

using namespace rlhf;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per product): a few training steps of
// stories260K under bf16 stay within this relative distance of float32 losses.
constexpr double kBf16LossRtol = 2e-2;

ModelConfig tiny_llama() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 97; c.hidden_size = 32; c.num_layers = 3; c.num_heads = 4; c.num_kv_heads = 2;
  c.head_dim = 8; c.intermediate_size = 48; c.max_position_embeddings = 64;
  return c;
}

Transformer random_model(const ModelConfig& cfg) {
  torch::manual_seed(7);
  Transformer m(cfg);
  torch::NoGradGuard g;
  for (auto& p : m->parameters()) p.normal_(0, 0.3);
  return m;
}

// Nodes of the autograd graph behind `t` whose name contains `name`.
int count_nodes(const torch::Tensor& t, const std::string& name) {
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo{t.grad_fn().get()};
  int n = 0;
  while (!todo.empty()) {
    auto* node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node).second) continue;
    if (node->name().find(name) != std::string::npos) ++n;
    for (const auto& e : node->next_edges()) todo.push_back(e.function.get());
  }
  return n;
}

struct Batch {
  std::string name;
  torch::Tensor tokens, positions, mask;  // (B, T); positions and mask may be undefined
  std::optional<KeySkip> skip;
};

// The training forwards' attention paths: plain causal, right padding (SFT batches), left
// padding with positions from the mask (PPO rollouts; our kernel's windows), a mask with a hole
// (the boolean-mask path), and skipped keys (shared-prompt pairs).
std::vector<Batch> training_batches(int64_t vocab) {
  torch::manual_seed(3);
  const int64_t B = 3, T = 12;
  auto tokens = torch::randint(vocab, {B, T}, torch::kLong);
  auto right = torch::ones({B, T}, torch::kLong), left = torch::ones({B, T}, torch::kLong);
  right[1].narrow(0, 8, 4).zero_(), right[2].narrow(0, 5, 7).zero_();
  left[0].narrow(0, 0, 3).zero_(), left[2].narrow(0, 0, 6).zero_();
  auto hole = torch::ones({B, T}, torch::kLong);
  hole[1][4] = 0;
  KeySkip skip{torch::tensor({4, 3, 5}, torch::kLong), torch::tensor({7, 6, 9}, torch::kLong)};
  return {{"causal", tokens, {}, {}, {}},
          {"right padding", tokens, {}, right, {}},
          {"left padding", tokens, positions_from_mask(left), left, {}},
          {"mask with a hole", tokens, {}, hole, {}},
          {"skipped keys", tokens, {}, {}, skip}};
}

struct Grads {
  double loss;
  std::map<std::string, torch::Tensor> grads;
  int checkpoint_nodes;
};

// Loss (a fixed random projection of the logits) and every parameter's gradient.
Grads grads_of(Transformer& m, const Batch& b, bool checkpoint, bool bf16) {
  m->zero_grad();
  m->set_checkpoint_activations(checkpoint);
  torch::Tensor loss;
  {
    const Autocast autocast(torch::kCPU, bf16);
    auto logits = m->logits(m->hidden_states(b.tokens, b.positions, b.mask, nullptr, b.skip ? &*b.skip : nullptr));
    torch::manual_seed(11);
    loss = (logits * torch::randn(logits.sizes())).sum();
  }
  Grads out{loss.item<double>(), {}, count_nodes(loss, "CheckpointFn")};
  loss.backward();
  for (const auto& p : m->named_parameters()) out.grads[p.key()] = p.value().grad().clone();
  return out;
}

void expect_same_grads(const Grads& a, const Grads& b, double rtol, const std::string& what) {
  EXPECT_NEAR(a.loss, b.loss, rtol * std::abs(a.loss) + 1e-6) << what;
  for (const auto& [name, g] : a.grads) {
    const auto& h = b.grads.at(name);
    const double err = (g - h).abs().max().item<double>(), scale = g.abs().max().item<double>();
    EXPECT_LE(err, rtol * scale + 1e-7) << what << ": " << name << " max |diff| " << err << " of " << scale;
  }
}

}  // namespace

TEST(ActivationCheckpointing, SameLossAndGradientsOnEveryTrainingAttentionPath) {
  auto m = random_model(tiny_llama());
  m->train();
  for (const auto& b : training_batches(tiny_llama().vocab_size)) {
    const auto kept = grads_of(m, b, /*checkpoint=*/false, /*bf16=*/false);
    const auto recomputed = grads_of(m, b, /*checkpoint=*/true, /*bf16=*/false);
    EXPECT_EQ(kept.checkpoint_nodes, 0) << b.name;
    EXPECT_EQ(recomputed.checkpoint_nodes, tiny_llama().num_layers) << b.name << ": one checkpoint per block";
    expect_same_grads(kept, recomputed, 1e-5, b.name);  // the same math: float32 rounding only
  }
}

TEST(ActivationCheckpointing, RecomputesUnderTheForwardsAutocast) {
  // The backward pass runs outside the caller's autocast scope: the recompute must switch bf16
  // back on, or its gradients are those of a float32 block.
  auto m = random_model(tiny_llama());
  m->train();
  for (const auto& b : training_batches(tiny_llama().vocab_size)) {
    const auto kept = grads_of(m, b, false, /*bf16=*/true);
    const auto recomputed = grads_of(m, b, true, /*bf16=*/true);
    EXPECT_EQ(recomputed.checkpoint_nodes, tiny_llama().num_layers) << b.name;
    expect_same_grads(kept, recomputed, 1e-5, b.name + " (bf16)");
  }
}

TEST(ActivationCheckpointing, OffWithoutGradientsAndWithACache) {
  auto m = random_model(tiny_llama());
  m->set_checkpoint_activations(true);
  auto tokens = torch::randint(tiny_llama().vocab_size, {2, 6}, torch::kLong);
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(m->forward(tokens).requires_grad());
  }
  auto cache = KVCache::allocate(tiny_llama(), 2, 8, torch::TensorOptions().dtype(torch::kFloat32));
  EXPECT_EQ(count_nodes(m->forward(tokens, {}, {}, &cache), "CheckpointFn"), 0);
}

TEST(MixedPrecision, AutocastComputesProductsInBf16AndRestoresTheCallersSetting) {
  torch::manual_seed(1);
  torch::nn::Linear lin(16, 8);
  auto x = torch::randn({4, 16});
  {
    const Autocast on(torch::kCPU, true);
    EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16);
    {
      const Autocast off(torch::kCPU, false);
      EXPECT_EQ(lin(x).scalar_type(), torch::kFloat32);
    }
    EXPECT_EQ(lin(x).scalar_type(), torch::kBFloat16) << "an inner scope restores the outer one";
  }
  EXPECT_EQ(lin(x).scalar_type(), torch::kFloat32);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
}

TEST(MixedPrecision, Bf16LogitsAreFloat32CloseButNotEqualAndMasterWeightsStayFloat32) {
  auto m = random_model(tiny_llama());
  m->train();
  const auto b = training_batches(tiny_llama().vocab_size)[2];  // left padding
  auto f32 = m->forward(b.tokens, b.positions, b.mask);
  torch::Tensor bf;
  {
    const Autocast autocast(torch::kCPU, true);
    bf = m->forward(b.tokens, b.positions, b.mask);
  }
  EXPECT_EQ(bf.scalar_type(), torch::kFloat32);
  const double err = (bf - f32).abs().max().item<double>(), scale = f32.abs().max().item<double>();
  EXPECT_GT(err, 0.0) << "bf16 products must change the logits";
  EXPECT_LE(err, 0.05 * scale) << "max |bf16 - float32| " << err << " of " << scale;
  bf.sum().backward();
  for (const auto& p : m->named_parameters()) {
    EXPECT_EQ(p.value().scalar_type(), torch::kFloat32) << p.key();
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_EQ(p.value().grad().scalar_type(), torch::kFloat32) << p.key();
  }
}

// ---- the trainers on stories260K: bf16 against float32, checkpointing against keeping all ----

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

TrainConfig small_train(const test::TempDir& tmp, const std::string& data, const std::string& run,
                        const std::string& precision, bool checkpoint) {
  TrainConfig c;
  c.model = stories();
  c.train_data = (tmp / data).string();
  c.run_dir = (tmp / run).string();
  c.batch_size = 4;
  c.max_steps = 3;
  c.lr = 3e-4;  // losses stay O(1), where a relative tolerance means something
  c.max_length = 48;
  c.progress = false;
  c.precision = precision;
  c.checkpoint_activations = checkpoint;
  return c;
}

std::vector<double> losses_of(const fs::path& run) {
  std::istringstream in(read_file(run / "metrics.jsonl"));
  std::vector<double> out;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(json::parse(l).at("loss").get<double>());
  return out;
}

using Train = std::function<void(const TrainConfig&)>;

std::vector<std::pair<std::string, Train>> trainers() {
  return {{"sft", [](const TrainConfig& t) { SftConfig c; c.train = t; train_sft(c, false); }},
          {"rm", [](const TrainConfig& t) { RewardConfig c; c.train = t; c.norm_samples = 0; train_reward_model(c, false); }},
          {"dpo", [](const TrainConfig& t) { DpoConfig c; c.train = t; train_dpo(c, false); }}};
}

}  // namespace

TEST(MixedPrecision, Bf16TrainerLossesStayWithinToleranceOfFloat32) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  for (const auto& [name, train] : trainers()) {
    const std::string data = name == "sft" ? "sft.jsonl" : "prefs.jsonl";
    train(small_train(tmp, data, name + "_f32", "float32", false));
    train(small_train(tmp, data, name + "_bf16", "bf16", false));
    const auto f32 = losses_of(tmp / (name + "_f32")), bf16 = losses_of(tmp / (name + "_bf16"));
    ASSERT_EQ(f32.size(), 3u) << name;
    ASSERT_EQ(bf16.size(), 3u) << name;
    bool differ = false;
    for (size_t i = 0; i < f32.size(); ++i) {
      EXPECT_NEAR(bf16[i], f32[i], kBf16LossRtol * std::abs(f32[i])) << name << " step " << i + 1;
      differ |= bf16[i] != f32[i];
    }
    EXPECT_TRUE(differ) << name << ": bf16 losses equal float32's bit for bit, so bf16 never ran";
  }
}

TEST(ActivationCheckpointing, TrainerLossesEqualThoseWithoutIt) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  for (const auto& [name, train] : trainers()) {
    const std::string data = name == "sft" ? "sft.jsonl" : "prefs.jsonl";
    train(small_train(tmp, data, name + "_kept", "float32", false));
    train(small_train(tmp, data, name + "_ckpt", "float32", true));
    const auto kept = losses_of(tmp / (name + "_kept")), ckpt = losses_of(tmp / (name + "_ckpt"));
    ASSERT_EQ(kept.size(), ckpt.size()) << name;
    for (size_t i = 0; i < kept.size(); ++i) EXPECT_NEAR(ckpt[i], kept[i], 1e-5 * std::abs(kept[i])) << name << " step " << i + 1;
  }
}

TEST(MixedPrecision, PpoIterationRunsWithBf16AndCheckpointing) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  PpoConfig c;
  c.train = small_train(tmp, "prompts.jsonl", "ppo", "bf16", true);
  c.train.max_steps = 1;
  c.rollout_batch = 4;
  c.minibatches = 2;
  c.ppo_epochs = 1;
  c.max_new_tokens = 8;
  RewardFn length = [](const auto&, const auto&, const std::vector<std::vector<int32_t>>& toks) {
    std::vector<double> out;
    for (const auto& t : toks) out.push_back(double(t.size()) / 8.0);
    return out;
  };
  const auto m = train_ppo(c, false, length);
  EXPECT_TRUE(std::isfinite(m.at("loss/policy")));
  EXPECT_TRUE(std::isfinite(m.at("loss/value")));
  EXPECT_EQ(m.at("ref/unchanged"), 1.0);
}
