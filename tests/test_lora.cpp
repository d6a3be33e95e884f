// LoRA (model/lora.h, formats/peft.h): adapters on the fused projections update exactly the
// rows of their HF module; a model with adapters equals its merged model, and with them off (or
// freshly attached) equals its base; only adapters (and modules_to_save) train; the PEFT folder
// round-trips; and the trainers train adapters only, export the merged model and the adapter,
// resume exactly, and take their reference from the base with no copy.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/io.h"
#include "formats/peft.h"
#include "formats/safetensors.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/transformer.h"
#include "small_training_data.h"
#include "test_util.h"
#include "trainers/dpo_trainer.h"
#include "trainers/ppo_trainer.h"
#include "trainers/reward_trainer.h"
#include "trainers/sft_trainer.h"
#include "trainers/trainer_util.h"

using namespace rlhf;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_llama() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 97; c.hidden_size = 32; c.num_layers = 2; c.num_heads = 4; c.num_kv_heads = 2;
  c.head_dim = 8; c.intermediate_size = 48; c.max_position_embeddings = 64;
  return c;
}

Transformer random_model(const ModelConfig& cfg) {
  torch::manual_seed(7);
  Transformer m(cfg);
  torch::NoGradGuard g;
  for (auto& p : m->parameters()) p.normal_(0, 0.3);
  m->eval();
  return m;
}

LoraConfig lora(std::vector<std::string> targets, int64_t r = 4, double alpha = 8) {
  LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.target_modules = std::move(targets);
  return c;
}

// B starts at zero (the adapter is a no-op); tests that need it to do something draw it.
void randomize_adapters(Transformer& m) {
  torch::NoGradGuard g;
  for (auto& [name, t] : lora_weights(*m))
    if (name.find(".lora_B.") != std::string::npos) t.normal_(0, 0.5);
}

torch::Tensor tokens() { return torch::tensor({{3, 17, 42, 8, 91, 5, 60, 2}, {11, 4, 77, 30, 2, 9, 13, 50}}, torch::kLong); }

torch::Tensor logits(Transformer& m) {
  torch::NoGradGuard g;
  return m->forward(tokens());
}

// A fresh model holding `weights` (canonical names).
Transformer model_of(const ModelConfig& cfg, const TensorMap& weights) {
  Transformer m(cfg);
  m->load_weights(weights, "test");
  m->eval();
  return m;
}

}  // namespace

TEST(Lora, FreshAdaptersLeaveTheModelAsItWas) {
  auto m = random_model(tiny_llama());
  const auto before = logits(m);
  attach_lora(*m, lora({"all-linear"}));
  EXPECT_TRUE(torch::equal(logits(m), before));  // B = 0: x W^T + 0
  EXPECT_EQ(m->lora().target_modules,
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
}

TEST(Lora, AdaptedModelEqualsItsMergedModelAndDiffersFromTheBase) {
  auto m = random_model(tiny_llama());
  const auto base = logits(m);
  attach_lora(*m, lora({"all-linear"}));
  randomize_adapters(m);
  const auto adapted = logits(m);
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-2);
  auto merged = model_of(m->config(), merged_weights(*m));
  EXPECT_TRUE(torch::allclose(logits(merged), adapted, 1e-5, 1e-5))
      << (logits(merged) - adapted).abs().max().item<double>();
  EXPECT_TRUE(torch::equal(logits(m), adapted)) << "merging must leave the adapted model as it was";
}

TEST(Lora, DisabledOnThisThreadOnlyGivesTheBase) {
  auto m = random_model(tiny_llama());
  const auto base = logits(m);
  attach_lora(*m, lora({"q_proj", "v_proj", "down_proj"}));
  randomize_adapters(m);
  const auto adapted = logits(m);
  {
    const LoraDisabled off;
    EXPECT_TRUE(torch::equal(logits(m), base));
    torch::Tensor other;  // another thread, meanwhile: adapters on
    std::thread([&] { other = logits(m); }).join();
    EXPECT_TRUE(torch::equal(other, adapted));
    {
      const LoraDisabled nested;
    }
    EXPECT_TRUE(torch::equal(logits(m), base)) << "a nested guard must restore 'disabled', not 'enabled'";
  }
  EXPECT_TRUE(torch::equal(logits(m), adapted));
}

TEST(Lora, AdaptersOnFusedMatricesUpdateTheirModulesRowsOnly) {
  auto m = random_model(tiny_llama());
  const auto base = merged_weights(*m);
  LoraConfig c = lora({"k_proj", "gate_proj"}, 2, 6);
  attach_lora(*m, c);
  randomize_adapters(m);
  const auto merged = merged_weights(*m);
  const auto adapters = lora_weights(*m);
  for (const auto& [name, w] : merged) {
    const bool adapted = name.ends_with("k_proj.weight") || name.ends_with("gate_proj.weight");
    if (!adapted) {
      EXPECT_TRUE(torch::equal(w, base.at(name))) << name;
      continue;
    }
    // The update of `name` is scale * B A of its own adapter: k rows of qkv, gate rows of gate_up.
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    const auto& A = adapters.at("base_model.model." + module + ".lora_A.weight");
    const auto& B = adapters.at("base_model.model." + module + ".lora_B.weight");
    EXPECT_TRUE(torch::allclose(w - base.at(name), torch::matmul(B, A).detach() * (6.0 / 2.0), 1e-6, 1e-6)) << name;
  }
  std::set<std::string> names;
  for (const auto& [name, t] : adapters) names.insert(name);
  std::set<std::string> want;
  for (int l = 0; l < 2; ++l)
    for (const char* mod : {"self_attn.k_proj", "mlp.gate_proj"})
      for (const char* ab : {"lora_A", "lora_B"})
        want.insert("base_model.model.model.layers." + std::to_string(l) + "." + mod + "." + ab + ".weight");
  EXPECT_EQ(names, want);
  EXPECT_EQ(adapters.at("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{2 * 8, 2}));  // H_kv * D rows
  EXPECT_EQ(adapters.at("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{2, 32}));
  // The model's own weights (what loaders and writers see) have no adapter in them.
  for (const auto& [name, t] : m->weights()) EXPECT_EQ(name.find("lora"), std::string::npos) << name;
}

TEST(Lora, OnlyAdaptersAndModulesToSaveGetGradients) {
  ModelConfig cfg = tiny_llama();
  cfg.num_labels = 1;  // a reward model: its head trains whole
  auto m = random_model(cfg);
  LoraConfig c = lora({"q_proj", "v_proj"});
  c.modules_to_save = {"score"};
  attach_lora(*m, c);
  std::set<std::string> trainable;
  for (const auto& [name, p] : named_trainable(*m)) trainable.insert(name);
  EXPECT_EQ(trainable.size(), 2u * 2u * 2u + 1u);  // 2 layers x (q, v) x (A, B), score.weight
  EXPECT_TRUE(trainable.contains("score.weight"));
  for (const auto& name : trainable) EXPECT_TRUE(name == "score.weight" || is_lora_parameter(name)) << name;
  m->train();
  m->scores(tokens()).sum().backward();
  for (const auto& p : m->named_parameters()) {
    const bool trains = trainable.contains(p.key());
    EXPECT_EQ(p.value().grad().defined(), trains) << p.key();
    if (trains && p.key().find("lora_B") != std::string::npos) {  // A's gradient is 0 while B = 0
      EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    }
  }
  const auto saved = lora_weights(*m);
  EXPECT_TRUE(saved.contains("base_model.model.score.weight"));
}

TEST(Lora, DropoutOnlyWhileTraining) {
  auto m = random_model(tiny_llama());
  LoraConfig c = lora({"q_proj", "v_proj"});
  c.dropout = 0.5;
  attach_lora(*m, c);
  randomize_adapters(m);
  auto merged = model_of(m->config(), merged_weights(*m));
  EXPECT_TRUE(torch::allclose(logits(m), logits(merged), 1e-5, 1e-5)) << "eval mode: no dropout";
  m->train();
  const auto a = logits(m), b = logits(m);
  EXPECT_FALSE(torch::equal(a, b)) << "training mode: a fresh mask each pass";
}

TEST(Lora, PeftFolderRoundTrips) {
  test::TempDir tmp;
  auto m = random_model(tiny_llama());
  LoraConfig c = lora({"q_proj", "o_proj", "up_proj"}, 3, 5);
  c.dropout = 0.05;
  c.base_model = "/models/base";
  attach_lora(*m, c);
  randomize_adapters(m);
  write_peft_adapter(tmp / "adapter", {m->lora(), "CAUSAL_LM", lora_weights(*m)});
  const auto j = json::parse(read_file(tmp / "adapter" / "adapter_config.json"));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["fan_in_fan_out"], false);
  EXPECT_EQ(j["base_model_name_or_path"], "/models/base");

  const auto read = read_peft_adapter(tmp / "adapter");
  EXPECT_EQ(read.config.r, 3);
  EXPECT_EQ(read.config.alpha, 5.0);
  EXPECT_EQ(read.config.dropout, 0.05);
  EXPECT_EQ(read.config.target_modules, c.target_modules);
  auto fresh = random_model(tiny_llama());
  attach_lora(*fresh, read.config);
  load_lora_weights(*fresh, read.weights, "adapter");
  EXPECT_TRUE(torch::equal(logits(fresh), logits(m)));

  // What the adapter cannot hold is refused by name.
  TensorMap missing = read.weights;
  missing.erase(missing.begin());
  auto other = random_model(tiny_llama());
  attach_lora(*other, read.config);
  EXPECT_THROW(load_lora_weights(*other, missing, "adapter"), Error);
  TensorMap extra = read.weights;
  extra["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = torch::zeros({3, 32});
  EXPECT_THROW(load_lora_weights(*other, extra, "adapter"), Error);
  for (const auto& [key, value] : std::vector<std::pair<std::string, json>>{
           {"peft_type", "IA3"}, {"use_dora", true}, {"fan_in_fan_out", true}, {"target_modules", ".*q_proj"},
           {"rank_pattern", {{"q_proj", 8}}}, {"bias", "all"}}) {
    json bad = j;
    bad[key] = value;
    write_file_atomic(tmp / "adapter" / "adapter_config.json", bad.dump());
    EXPECT_THROW(read_peft_adapter(tmp / "adapter"), Error) << key;
  }
}

TEST(Lora, RefusesWhatItCannotAdapt) {
  auto m = random_model(tiny_llama());
  EXPECT_THROW(attach_lora(*m, lora({"c_attn"})), Error);
  LoraConfig save = lora({"q_proj"});
  save.modules_to_save = {"score"};  // a language model has no score head
  EXPECT_THROW(attach_lora(*m, save), Error);
  EXPECT_THROW(parse_lora_targets("q_proj,qq_proj"), Error);
  EXPECT_THROW(parse_lora_targets("all-linear,q_proj"), Error);
  EXPECT_EQ(parse_lora_targets(" q_proj, v_proj ,q_proj"), (std::vector<std::string>{"q_proj", "v_proj"}));
  ModelConfig gpt2 = tiny_llama();
  gpt2.architecture = "GPT2LMHeadModel";
  gpt2.num_kv_heads = 4; gpt2.norm = NormType::LayerNorm; gpt2.mlp = MlpType::GELU;
  gpt2.positions = PositionType::Learned;
  Transformer g(gpt2);
  EXPECT_THROW(attach_lora(*g, lora({"q_proj"})), Error);
  attach_lora(*m, lora({"q_proj"}));
  EXPECT_THROW(attach_lora(*m, lora({"v_proj"})), Error);  // already attached
}

// ---- the trainers with LoRA, on stories260K ------------------------------------------------

namespace {

std::string stories() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

TrainConfig lora_train(const test::TempDir& tmp, const std::string& data, const std::string& run) {
  TrainConfig c;
  c.model = stories();
  c.train_data = (tmp / data).string();
  c.run_dir = (tmp / run).string();
  c.batch_size = 4;
  c.max_steps = 6;
  c.lr = 1e-2;
  c.lr_schedule = "constant";
  c.max_length = 48;
  c.progress = false;
  c.lora_r = 4;
  c.lora_alpha = 8;
  c.lora_target_modules = "all-linear";
  return c;
}

std::vector<json> metrics_of(const fs::path& run) {
  std::istringstream in(read_file(run / "metrics.jsonl"));
  std::vector<json> out;
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(json::parse(l));
  return out;
}

}  // namespace

TEST(LoraTraining, SftTrainsAdaptersOnlyAndExportsTheMergedModelAndTheAdapter) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  SftConfig c;
  c.train = lora_train(tmp, "sft.jsonl", "sft");
  train_sft(c, false);
  const auto m = metrics_of(tmp / "sft");
  ASSERT_EQ(m.size(), 6u);
  EXPECT_LT(m.back()["loss"].get<double>(), m.front()["loss"].get<double>() - 0.1);

  // The checkpoint holds the adapters alone.
  for (const auto& [name, t] : read_safetensors(tmp / "sft" / "checkpoint" / "model.safetensors"))
    EXPECT_TRUE(is_lora_parameter(name)) << name;
  // model/ is the base with the adapter merged, bit for bit what `rlhf lora merge` makes of the
  // adapter on the base file: training left the base weights as they were.
  auto base = load_model(stories());
  auto rebuilt = load_model_with_adapter(stories(), tmp / "sft" / "adapter");
  const auto want = merged_weights(*rebuilt.model);
  const auto got = read_model_files(tmp / "sft" / "model").weights;
  const auto base_w = base.model->weights();
  ASSERT_EQ(got.size(), want.size());
  int changed = 0;
  for (const auto& [name, w] : want) {
    EXPECT_TRUE(torch::equal(got.at(name), w)) << name;
    const bool adapted = name.find("_proj.weight") != std::string::npos;
    if (!adapted) {
      EXPECT_TRUE(torch::equal(got.at(name), base_w.at(name))) << name;
    }
    changed += adapted && !torch::equal(got.at(name), base_w.at(name));
  }
  EXPECT_EQ(changed, 5 * 7);  // every projection of stories260K's 5 layers
  const auto j = json::parse(read_file(tmp / "sft" / "adapter" / "adapter_config.json"));
  EXPECT_EQ(j["r"], 4);
  EXPECT_EQ(j["base_model_name_or_path"], fs::absolute(stories()).lexically_normal().string());
}

TEST(LoraTraining, ResumeEqualsAnUninterruptedRun) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  SftConfig straight, resumed;
  straight.train = lora_train(tmp, "sft.jsonl", "straight");
  resumed.train = lora_train(tmp, "sft.jsonl", "resumed");
  for (auto* c : {&straight, &resumed}) {
    c->train.max_steps = 4;
    c->train.lora_dropout = 0.1;  // resumed dropout masks must be the uninterrupted run's too
  }
  train_sft(straight, false);
  train_sft(resumed, false, /*stop_after=*/2);
  train_sft(resumed, true);
  const auto a = metrics_of(tmp / "straight"), b = metrics_of(tmp / "resumed");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i]["loss"], b[i]["loss"]) << "step " << i + 1;
  EXPECT_TRUE(read_file(tmp / "straight" / "adapter" / "adapter_model.safetensors") ==
              read_file(tmp / "resumed" / "adapter" / "adapter_model.safetensors"))
      << "the resumed run's adapters differ";
}

TEST(LoraTraining, RewardModelTrainsItsHeadWithTheAdapters) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  RewardConfig c;
  c.train = lora_train(tmp, "prefs.jsonl", "rm");
  c.norm_samples = 0;
  train_reward_model(c, false);
  const auto m = metrics_of(tmp / "rm");
  EXPECT_LT(m.back()["loss"].get<double>(), m.front()["loss"].get<double>());
  const auto j = json::parse(read_file(tmp / "rm" / "adapter" / "adapter_config.json"));
  EXPECT_EQ(j["task_type"], "SEQ_CLS");
  EXPECT_EQ(j["modules_to_save"], json::array({"score"}));
  const auto adapter = read_safetensors(tmp / "rm" / "adapter" / "adapter_model.safetensors");
  const auto merged = read_model_files(tmp / "rm" / "model").weights;
  ASSERT_TRUE(adapter.contains("base_model.model.score.weight"));
  EXPECT_TRUE(torch::equal(adapter.at("base_model.model.score.weight"), merged.at("score.weight")));
}

TEST(LoraTraining, DpoTakesItsReferenceFromTheBase) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  DpoConfig c;
  c.train = lora_train(tmp, "prefs.jsonl", "dpo");
  c.train.lr = 3e-3;
  train_dpo(c, false);
  const auto m = metrics_of(tmp / "dpo");
  // Step 1: the policy is the reference (B = 0), so the loss is log 2 and the margin 0.
  EXPECT_NEAR(m.front()["loss"].get<double>(), std::log(2.0), 1e-6);
  EXPECT_GT(m.back()["rewards/margins"].get<double>(), m.front()["rewards/margins"].get<double>());
  EXPECT_TRUE(fs::exists(tmp / "dpo" / "adapter" / "adapter_model.safetensors"));
}

TEST(LoraTraining, PpoReferenceIsThePoliciesBaseWithAdaptersOff) {
  test::TempDir tmp;
  test::write_small_training_data(tmp);
  PpoConfig c;
  c.train = lora_train(tmp, "prompts.jsonl", "ppo");
  c.train.max_steps = 2;
  c.train.lr = 3e-3;
  c.rollout_batch = 4;
  c.minibatches = 2;
  c.ppo_epochs = 2;
  c.max_new_tokens = 8;
  RewardFn length = [](const auto&, const auto&, const std::vector<std::vector<int32_t>>& toks) {
    std::vector<double> out;
    for (const auto& t : toks) out.push_back(double(t.size()) / 8.0);
    return out;
  };
  // The base's log-probs of each rollout, from a model loaded on its own.
  auto base = load_model(stories());
  std::vector<double> ref_gap, policy_gap;
  PpoProbes probes;
  probes.on_rollout = [&](const PpoRolloutView& r) {
    torch::NoGradGuard g;
    auto logits = base.model->forward(r.ids, positions_from_mask(r.mask), r.mask).narrow(1, r.P - 1, r.R);
    auto lp = torch::log_softmax(logits, -1).gather(2, r.ids.narrow(1, r.P, r.R).unsqueeze(-1)).squeeze(-1);
    ref_gap.push_back(((lp - r.ref_logprobs) * r.response_mask).abs().max().item<double>());
    policy_gap.push_back(((lp - r.logprobs) * r.response_mask).abs().max().item<double>());
  };
  const auto m = train_ppo(c, false, length, 0, {}, probes);
  ASSERT_EQ(ref_gap.size(), 2u);
  EXPECT_LT(ref_gap[0], 1e-4);
  EXPECT_LT(ref_gap[1], 1e-4) << "after an update the reference must still be the base";
  EXPECT_GT(policy_gap[1], 1e-3) << "after an update the policy must differ from the base";
  EXPECT_EQ(m.at("ref/unchanged"), 1.0);
  EXPECT_TRUE(fs::exists(tmp / "ppo" / "adapter" / "adapter_model.safetensors"));
  // The value model (from the policy, with a zero head) trains through adapters and its head.
  for (const auto& [name, t] : read_safetensors(tmp / "ppo" / "checkpoint" / "model.safetensors"))
    EXPECT_TRUE(is_lora_parameter(name) || name == "value.score.weight" || name == "value.score.bias") << name;
}
