// rlhf: the command-line tool. One subcommand per stage; each parses flags, calls the
// library and prints. Errors become one line on stderr and exit code 1.
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "data/datasets.h"
#include "feedback/label_server.h"
#include "generate/generator.h"
#include "kernels/cpu_kernels.h"
#include "dist/process_group.h"
#include "formats/formats.h"
#include "formats/gguf_writer.h"
#include "model/model.h"
#include "tokenizer/chat_template.h"
#include "train/config_fields.h"
#include "pipeline/pipeline.h"
#include "report/report.h"
#include "trainers/dpo_trainer.h"
#include "trainers/ppo_trainer.h"
#include "model/reward_model.h"
#include "trainers/reward_trainer.h"
#include "trainers/sft_trainer.h"
#include "tokenizer/tokenizer.h"

using namespace rlhf;
using json = nlohmann::json;

namespace {

std::string read_stdin() {
  std::string s((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  return s;
}

// ---- rlhf generate -------------------------------------------------------------------
struct GenerateArgs {
  std::string model, tokenizer, prompt, chat, system, device = "cpu", dtype = "float32", weights = "auto";
  int n = 1;
  bool json_out = false, no_bos = false;
  GenerateOptions gen;
};

void add_generate(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto* cmd = app.add_subcommand("generate", "Generate text with a model (streams to the terminal)");
  cmd->add_option("--model,-m", args->model, "Model: HF folder, .gguf, or llama2.c .bin")->required();
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer file/folder (overrides the model's)");
  cmd->add_option("--prompt,-p", args->prompt, "Prompt text (empty: start from BOS)");
  cmd->add_option("--n", args->n, "Number of sequences to sample for the prompt")->check(CLI::PositiveNumber);
  cmd->add_option("--max-new-tokens", args->gen.max_new_tokens, "Tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature,-t", args->gen.sampling.temperature, "Sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", args->gen.sampling.top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", args->gen.sampling.top_p, "Nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--min-p", args->gen.sampling.min_p, "Drop tokens below min_p * p_max; 0 = off")->capture_default_str();
  cmd->add_option("--repetition-penalty", args->gen.sampling.repetition_penalty, "HF-style penalty; 1 = off")->capture_default_str();
  cmd->add_option("--seed,-s", args->gen.seed, "Random seed (sequence i uses a stream derived from it)")->capture_default_str();
  cmd->add_option("--stop", args->gen.stop_strings, "Stop when the text contains this string (repeatable)")
      ->check(CLI::Validator(
          [](std::string& s) { return s.empty() ? std::string("an empty stop string would stop after one token") : ""; },
          "NONEMPTY"));
  cmd->add_option("--batch", args->gen.max_batch, "Sequences decoded together at most")->capture_default_str();
  cmd->add_option("--chat", args->chat, "Send the prompt as a user message with this chat template (llama2, chatml, hh)");
  cmd->add_option("--system", args->system, "System message for --chat");
  cmd->add_flag("--no-bos", args->no_bos, "Do not prepend BOS to the prompt");
  cmd->add_flag("--json", args->json_out, "Print one JSON object per sequence (text, tokens, logprobs)");
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "float32 or bfloat16")->capture_default_str();
  cmd->add_option("--weights", args->weights, kWeightsHelp)->capture_default_str();
  cmd->callback([args] {
    auto lm = load_model(args->model, {args->device, args->dtype, args->tokenizer, args->weights});
    check(lm.tokenizer != nullptr, args->model + ": no tokenizer found with the model; pass --tokenizer");
    const Tokenizer& tok = *lm.tokenizer;
    bool raw_ids = args->no_bos;  // else the prompt-encoding rule (encode_prompt) adds BOS
    std::string prompt_text = args->prompt;
    if (!args->chat.empty()) {
      std::vector<ChatMessage> messages;
      if (!args->system.empty()) messages.push_back({"system", args->system});
      messages.push_back({"user", args->prompt});
      prompt_text = apply_chat_template(args->chat, messages, /*add_generation_prompt=*/true, &tok);
      // The template writes BOS itself where the model wants one (as apply_chat_template does).
      raw_ids = true;
      // Chat models end their turn with EOS (</s>, <|im_end|>); the plain HH format has none,
      // so the next "Human:" turn ends the reply.
      if (args->chat == "hh") args->gen.stop_strings.push_back("\n\nHuman:");
    }
    auto prompt_ids = raw_ids ? tok.encode(prompt_text, {.add_bos = false, .parse_special = true})
                              : encode_prompt(tok, prompt_text);
    check(!prompt_ids.empty(), "the prompt is empty and the tokenizer has no BOS token to start from");
    std::vector<std::vector<int32_t>> prompts(args->n, prompt_ids);

    const bool stream = !args->json_out && args->n == 1;
    TextStreamer streamer(tok);
    if (stream) {
      for (int32_t id : prompt_ids) std::cout << streamer.put(id);
      std::cout << std::flush;
    }
    auto t0 = std::chrono::steady_clock::now();
    auto results = generate(lm.model, tok, prompts, args->gen, [&](size_t, int32_t id) {
      if (stream) std::cout << streamer.put(id) << std::flush;
    });
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    size_t n_tokens = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& r = results[i];
      n_tokens += r.tokens.size();
      if (args->json_out) {
        // The text may end inside a character or hold byte tokens that are not UTF-8: U+FFFD
        // in `text`, the exact ids in `tokens`.
        std::cout << dump_json({{"index", i}, {"prompt", prompt_text}, {"text", r.text}, {"tokens", r.tokens},
                                {"logprobs", r.logprobs}, {"finish_reason", r.finish_reason}})
                  << "\n";
      } else if (!stream) {
        std::cout << "--- sample " << i << " (" << r.finish_reason << ")\n" << valid_utf8(prompt_text + r.text) << "\n";
      }
    }
    if (stream) std::cout << streamer.flush() << "\n";
    std::cerr << "generated " << n_tokens << " tokens in " << secs << " s (" << (n_tokens / std::max(secs, 1e-9))
              << " tokens/s)\n";
  });
}

// ---- rlhf tokenize -------------------------------------------------------------------
void add_tokenize(CLI::App& app) {
  struct Args { std::string model, tokenizer; bool decode = false, lines = false, no_special = false, raw = false; };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("tokenize", "Text on stdin -> token ids as a JSON array (or back with --decode)");
  auto* m = cmd->add_option("--model,-m", args->model, "Take the tokenizer of this model");
  auto* t = cmd->add_option("--tokenizer", args->tokenizer,
                            "Tokenizer file or folder (tokenizer.json, encoder.json+vocab.bpe, tok512.bin)");
  m->excludes(t);
  cmd->add_flag("--decode", args->decode, "Read a JSON array of ids on stdin, print the text");
  cmd->add_flag("--lines", args->lines, "One input per line (JSON array per line out)");
  cmd->add_flag("--no-special", args->no_special, "Add no BOS/EOS (default: the tokenizer's own rule)");
  cmd->add_flag("--raw-special", args->raw, "Treat special-token text such as <|endoftext|> as plain text");
  cmd->callback([args] {
    std::unique_ptr<Tokenizer> tok;
    if (!args->tokenizer.empty()) {
      tok = load_tokenizer(args->tokenizer);
    } else {
      check(!args->model.empty(), "tokenize needs --model or --tokenizer");
      tok = read_model_files(args->model).tokenizer;
      check(tok != nullptr, args->model + ": the model carries no tokenizer; pass --tokenizer");
    }
    const std::string input = read_stdin();
    std::vector<std::string> items;
    if (args->lines) {
      std::istringstream ss(input);
      for (std::string line; std::getline(ss, line);) items.push_back(line);
    } else {
      items.push_back(input);
    }
    EncodeOptions enc;
    enc.add_bos = !args->no_special && tok->add_bos_default();
    enc.parse_special = !args->raw;
    for (const auto& item : items) {
      if (args->decode) {
        json ids;
        try {
          ids = json::parse(item);
        } catch (const json::exception& e) {
          throw Error("stdin: expected a JSON array of token ids: " + std::string(e.what()));
        }
        check(ids.is_array(), "stdin: expected a JSON array of token ids");
        std::vector<int32_t> v;
        for (const auto& x : ids) {
          check(x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < tok->vocab_size(),
                "stdin: " + x.dump() + " is not a token id of this vocabulary (size " + std::to_string(tok->vocab_size()) + ")");
          v.push_back(x.get<int32_t>());
        }
        std::cout << tok->decode(v, false) << (args->lines ? "\n" : "");
      } else {
        std::cout << json(tok->encode(item, enc)).dump() << "\n";
      }
    }
  });
}

// ---- rlhf convert --------------------------------------------------------------------
void add_convert(CLI::App& app) {
  struct Args { std::string in, out, tokenizer, dtype = "float32", type = "f16"; };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("convert", "Convert any readable model to the Hugging Face layout or to GGUF");
  cmd->add_option("--in,-i", args->in, "Source: HF folder, .gguf, or llama2.c .bin")->required();
  cmd->add_option("--out,-o", args->out,
                  "Destination: a folder (Hugging Face layout), or a .gguf file (llama.cpp, Ollama); written atomically")
      ->required();
  cmd->add_option("--tokenizer", args->tokenizer, "Tokenizer for sources without one");
  cmd->add_option("--dtype", args->dtype, "Hugging Face output: float32 or bfloat16")->capture_default_str();
  cmd->add_option("--type", args->type, "GGUF output: the matrices' type, f32, f16, bf16 or q8_0")->capture_default_str();
  cmd->callback([args] {
    const bool gguf = std::filesystem::path(args->out).extension() == ".gguf";
    const auto dtype = parse_dtype(args->dtype);
    const auto gguf_type = parse_gguf_file_type(args->type);  // bad values fail before anything is read
    auto files = read_model_files(args->in, args->tokenizer);
    if (!args->tokenizer.empty()) files.tokenizer = load_tokenizer(args->tokenizer);
    validate_weights(files.config, files.weights, args->in);
    if (gguf) {
      write_gguf(args->out, files.config, files.weights, files.tokenizer.get(), gguf_type,
                 std::filesystem::path(args->in).filename().string());
      std::cerr << "wrote " << args->out << " (GGUF " << args->type << ", " << files.config.num_parameters()
                << " parameters)\n";
      return;
    }
    for (auto& [name, t] : files.weights) t = t.to(dtype);
    write_hf_dir(args->out, files.config, files.weights, files.tokenizer.get());
    std::cerr << "wrote " << args->out << " (" << files.weights.size() << " tensors, "
              << files.config.num_parameters() << " parameters" << (files.tokenizer ? ", tokenizer" : "") << ")\n";
  });
}

// ---- training stages: rlhf sft / rm train / dpo ------------------------------------------
// Every field of the stage's config is a flag and a TOML key; `--config FILE` is read first
// and flags override it. The resolved config lands in RUN_DIR/config.toml.
template <class Config, class Train>
void add_trainer(CLI::App& parent, const std::string& name, const std::string& help, Train train) {
  auto cfg = std::make_shared<Config>();
  auto config_path = std::make_shared<std::string>();
  auto resume = std::make_shared<bool>(false);
  auto* cmd = parent.add_subcommand(name, help);
  add_config_options(*cmd, *cfg, *config_path);
  cmd->add_flag("--resume", *resume, "Continue the run in run_dir from its last checkpoint");
  // The callback owns the config and the path the option callbacks write to.
  cmd->callback([cfg, config_path, resume, train] {
    auto m = train(*cfg, *resume);
    json j = json::object();
    for (const auto& [k, v] : m) j[k] = v;
    std::cout << j.dump() << "\n";
    std::cerr << "model written to " << (std::filesystem::path(cfg->train.run_dir) / "model").string() << "\n";
    if (cfg->train.lora_r > 0)
      std::cerr << "LoRA adapter (PEFT layout) written to "
                << (std::filesystem::path(cfg->train.run_dir) / "adapter").string() << "\n";
  });
}

// ---- rlhf rm score --------------------------------------------------------------------
void add_rm_score(CLI::App& rm) {
  struct Args { std::string model, in, device = "cpu"; int64_t max_length = 512, batch = 16; };
  auto args = std::make_shared<Args>();
  auto* cmd = rm.add_subcommand("score", "Score texts with a reward model: JSONL in, JSONL with \"score\" out");
  cmd->add_option("--model,-m", args->model, "Reward model folder (from rlhf rm train)")->required();
  cmd->add_option("--in,-i", args->in,
                  "JSONL with prompt/completion, or text, per line (preference files: chosen and rejected are scored)")
      ->required();
  cmd->add_option("--max-length", args->max_length, "Tokens per text at most")->capture_default_str();
  cmd->add_option("--batch", args->batch, "Texts scored together")->capture_default_str();
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->callback([args] {
    auto rm = load_reward_model(args->model, {args->device});
    std::istringstream lines(read_maybe_gzip(args->in));
    std::vector<json> records;
    std::vector<std::pair<std::string, std::string>> texts;
    size_t line_no = 0;
    for (std::string line; std::getline(lines, line);) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j = json::parse(line, nullptr, false);
      const std::string where = args->in + ":" + std::to_string(line_no);
      check(j.is_object(), where + ": not a JSON object");
      auto str = [&](const char* k) {
        check(j[k].is_string(), where + ": field '" + k + "' must be a string");
        return j[k].get<std::string>();
      };
      if (j.contains("chosen") && j.contains("rejected")) {
        auto p = j.contains("prompt") ? PreferencePair{str("prompt"), str("chosen"), str("rejected")}
                                      : split_hh_pair(str("chosen"), str("rejected"), where);
        texts.emplace_back(p.prompt, p.chosen);
        texts.emplace_back(p.prompt, p.rejected);
      } else if (j.contains("completion")) {
        texts.emplace_back(j.contains("prompt") ? str("prompt") : "", str("completion"));
      } else {
        texts.emplace_back("", str("text"));
      }
      records.push_back(j);
    }
    check(!records.empty(), args->in + ": no records");
    std::vector<double> raw;
    auto scores = score_texts(rm, texts, args->max_length, args->batch, &raw);
    size_t k = 0;
    for (auto& j : records) {
      if (j.contains("chosen") && j.contains("rejected")) {
        j["score_chosen"] = scores[k];
        j["score_rejected"] = scores[k + 1];
        k += 2;
      } else {
        j["score"] = scores[k];
        j["raw_score"] = raw[k];
        ++k;
      }
      std::cout << j.dump() << "\n";
    }
  });
}

// ---- rlhf pipeline CONFIG -------------------------------------------------------------
void add_pipeline(CLI::App& app) {
  auto cfg = std::make_shared<PipelineConfig>();
  auto config_path = std::make_shared<std::string>();
  auto force = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("pipeline", "The whole loop: sample -> label -> reward model -> PPO -> evaluation");
  // The positional CONFIG is read when parsed, so flags that follow override it; the stages'
  // settings are flags such as --ppo.kl-coef and TOML tables [rm], [ppo].
  add_config_options(*cmd, *cfg, *config_path, "config");
  cmd->add_flag("--force", *force, "Redo every stage, even those whose outputs exist");
  cmd->callback([cfg, config_path, force] { run_pipeline(*cfg, *force); });
}

// ---- rlhf label serve | export ----------------------------------------------------------
std::atomic<bool> g_stop{false};

void add_label(CLI::App& app) {
  auto* label = app.add_subcommand("label", "Human labeling: serve the ranking page, export rankings");
  label->require_subcommand(1);

  struct ServeArgs {
    LabelServeOptions opt;
    std::string prompts, model, device = "cpu", dtype = "float32";
    int64_t max_new_tokens = 48, seed = 0;
    double temperature = 1.0;
  };
  auto a = std::make_shared<ServeArgs>();
  auto* serve = label->add_subcommand("serve", "Generate K completions per prompt and serve the page labelers rank them on");
  serve->add_option("--db", a->opt.db, "SQLite database of prompts, completions and rankings (created if missing)")->required();
  serve->add_option("--prompts", a->prompts, "JSONL of {\"prompt\"} (optional \"completions\": rank those instead of generating)");
  serve->add_option("--model,-m", a->model, "Policy that generates the completions");
  serve->add_option("--k", a->opt.k, "Completions per prompt")->capture_default_str();
  serve->add_option("--labelers-per-prompt", a->opt.labelers_per_prompt, "Labelers who rank each prompt")->capture_default_str();
  serve->add_option("--host", a->opt.host, "Address to listen on")->capture_default_str();
  serve->add_option("--port", a->opt.port, "Port (0: any free one)")->capture_default_str();
  serve->add_option("--token", a->opt.token, "Access token any labeler may sign in with (default: made up and printed)");
  serve->add_option("--labeler", a->opt.labelers,
                    "NAME=TOKEN: a labeler with their own token (repeatable; when given, replaces the stored list)");
  serve->add_option("--session-hours", a->opt.session_hours, "How long a sign-in lasts")->capture_default_str();
  serve->add_option("--max-new-tokens", a->max_new_tokens, "Completion length at most")->capture_default_str();
  serve->add_option("--temperature", a->temperature, "Sampling temperature")->capture_default_str();
  serve->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  serve->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  serve->add_option("--dtype", a->dtype, "float32 or bfloat16")->capture_default_str();
  serve->callback([a] {
    LabelStore store(a->opt.db);
    prepare_label_store(store, a->opt, a->prompts.empty() ? std::vector<LabelPrompt>{} : read_label_prompts(a->prompts));
    check(store.progress().prompts > 0, a->opt.db + ": no prompts (give --prompts)");
    auto completer = [a]() -> CompleteFn {
      if (a->model.empty()) return {};
      auto policy = std::make_shared<LoadedModel>(load_model(a->model, {a->device, a->dtype}));
      return policy_completer(policy, a->opt.k, a->max_new_tokens, a->temperature, static_cast<uint64_t>(a->seed));
    };
    std::signal(SIGINT, [](int) { g_stop = true; });
    std::signal(SIGTERM, [](int) { g_stop = true; });
    serve_labels(store, a->opt, completer, [] { return g_stop.load(); });
    std::cerr << "stopped; " << store.submission_count() << " rankings in " << a->opt.db << "\n";
  });

  struct ExportArgs { std::string db, out; bool pairs = false; };
  auto e = std::make_shared<ExportArgs>();
  auto* exp = label->add_subcommand("export", "Rankings from the labeling database -> JSONL for the trainers");
  exp->add_option("--db", e->db, "Labeling database")->required();
  exp->add_option("--out,-o", e->out, "Output JSONL (written atomically)")->required();
  exp->add_flag("--pairs", e->pairs, "Write preference pairs (prompt/chosen/rejected, K-choose-2 minus ties) instead");
  exp->callback([e] {
    check(std::filesystem::exists(e->db), e->db + ": no such labeling database");
    LabelStore store(e->db);
    const auto rankings = store.export_rankings();
    if (!e->pairs) {
      write_rankings(e->out, rankings);
      std::cerr << rankings.size() << " rankings written to " << e->out << "\n";
      return;
    }
    const auto pairs = rankings_to_pairs(rankings);
    write_file_atomic(e->out, [&](std::ostream& out) {
      for (const auto& p : pairs) {
        const Ranking& rk = rankings[p.group];
        json j = {{"prompt", p.prompt}, {"chosen", p.chosen}, {"rejected", p.rejected}, {"labeler", rk.labeler},
                  {"prompt_id", rk.extra.value("prompt_id", json(nullptr))}};
        const auto& flags = rk.extra.at("flags");  // one list per completion
        j["chosen_flags"] = flags.at(p.chosen_index);
        j["rejected_flags"] = flags.at(p.rejected_index);
        out << dump_json(j) << "\n";
      }
    });
    std::cerr << pairs.size() << " pairs from " << rankings.size() << " rankings written to " << e->out << "\n";
  });
}

// ---- rlhf report RUN_DIR --------------------------------------------------------------
void add_report(CLI::App& app) {
  struct Args { std::string run_dir, out; };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("report", "One HTML page of a run: training curves, reward-model accuracy, evaluation, samples");
  cmd->add_option("run_dir", args->run_dir, "Run directory: a pipeline's, or any trainer's run_dir")->required();
  cmd->add_option("--out,-o", args->out, "Where to write the page (default RUN_DIR/report.html)");
  cmd->callback([args] { std::cout << write_report(args->run_dir, args->out).string() << "\n"; });
}

// ---- rlhf launch --nproc N -- COMMAND ... ------------------------------------------------
void add_launch(CLI::App& app) {
  struct Args { int nproc = 2, master_port = 0; std::vector<std::string> command; };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("launch", "Run a command as N data-parallel processes on this machine (as torchrun)");
  cmd->add_option("--nproc", args->nproc, "Processes (ranks)")->capture_default_str();
  cmd->add_option("--master-port", args->master_port, "Rendezvous port on 127.0.0.1 (default: a free one)");
  cmd->add_option("command", args->command, "The command, after --: rlhf launch --nproc 2 -- rlhf sft ...")
      ->required()
      ->expected(-1);
  cmd->callback([args] {
    const int status = launch_local(args->nproc, args->command, args->master_port);
    if (status != 0) std::exit(status);
  });
}

// c10 errors carry a backtrace after the first line; users need only the first line.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  rlhf::flush_denormals_on_cpu_threads();  // kernels/cpu_kernels.h: 1.5x on a training step
  CLI::App app{"rlhf: align language models with human feedback (rlhf.cpp)"};
  app.require_subcommand(1);
  add_generate(app);
  add_tokenize(app);
  add_convert(app);
  add_launch(app);
  add_trainer<SftConfig>(app, "sft", "Supervised fine-tuning on prompt/completion or messages JSONL",
                         [](SftConfig c, bool resume) { return train_sft(c, resume); });
  auto* rm = app.add_subcommand("rm", "Reward models: train one from preferences or rankings, score texts");
  rm->require_subcommand(1);
  add_trainer<RewardConfig>(*rm, "train", "Train a reward model (Bradley-Terry) on preference pairs or rankings",
                            [](RewardConfig c, bool resume) { return train_reward_model(c, resume); });
  add_rm_score(*rm);
  add_trainer<DpoConfig>(app, "dpo", "Direct preference optimization (or IPO) against a frozen reference",
                         [](DpoConfig c, bool resume) { return train_dpo(c, resume); });
  add_pipeline(app);
  add_report(app);
  cli::add_serve(app);
  add_label(app);
  cli::add_reason_commands(app);
  add_trainer<PpoConfig>(app, "ppo",
                         "PPO against a reward (a reward model, verifiers, a judge: --reward) with a KL penalty to the "
                         "frozen starting policy",
                         [](PpoConfig c, bool resume) { return train_ppo(c, resume); });
  cli::add_rag(app);
  cli::add_rlaif(app);
  cli::add_react(app);
  cli::add_cai(app);
  cli::add_redteam(app);
  cli::add_lora(app);
  cli::add_tictactoe(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::cerr << "rlhf: error: " << first_line(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "rlhf: error: " << first_line(e.what()) << "\n";
    return 1;
  }
  return 0;
}
