// rlhf cai revise: supervised Constitutional AI data (src/feedback/cai.h). Every field of
// CaiConfig is a TOML key and a flag; flags override the file.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "feedback/cai.h"
#include "train/config_fields.h"

namespace rlhf::cli {

void add_cai(CLI::App& app) {
  auto cfg = std::make_shared<CaiConfig>();
  auto config_path = std::make_shared<std::string>();
  auto* cai = app.add_subcommand("cai", "Constitutional AI: critique and revise replies to red-team prompts");
  cai->require_subcommand(1);
  auto* revise = cai->add_subcommand(
      "revise", "Answer red-team prompts, critique and revise under drawn principles; write transcript.jsonl and sft.jsonl");
  add_config_options(*revise, *cfg, *config_path);
  revise->callback([cfg, config_path] {
    const CaiStats s = cai_revise(*cfg);
    std::cout << nlohmann::json{{"prompts", s.prompts},
                                {"revisions", s.revisions},
                                {"unusable_revisions", s.unusable_revisions},
                                {"unrevised_prompts", s.unrevised_prompts},
                                {"sft_examples", s.sft_examples},
                                {"helpful_examples", s.helpful_examples}}
                     .dump()
              << "\n";
    const auto out = std::filesystem::path(cfg->out_dir);
    std::cerr << "wrote " << (out / "transcript.jsonl").string() << " and " << (out / "sft.jsonl").string() << " ("
              << s.unusable_revisions << " of " << s.revisions << " revisions empty and skipped; " << s.unrevised_prompts
              << " prompts never revised, left out)\n";
  });
}

}  // namespace rlhf::cli
