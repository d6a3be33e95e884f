// Test helper for the Python cross-checks (tests/python): runs our tokenizer on JSON lines.
// Until the CLI has `rlhf tokenize`, this is how Python reaches the C++ tokenizers.
//   rlhf_tokenize_tool --tokenizer PATH [--add-bos] [--no-parse-special] [--decode]
//       stdin: one JSON string per line -> stdout: one JSON array of ids per line
//       (--decode: arrays in, strings out, special tokens skipped)
//   rlhf_tokenize_tool --tokenizer PATH --export-hf DIR
//       writes DIR/tokenizer.json and DIR/tokenizer_config.json
#include <filesystem>
#include <iostream>
#include <string>

#include "core/error.h"
#include "core/io.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using nlohmann::json;
  std::string tokenizer_path, export_dir;
  rlhf::EncodeOptions opt;
  bool decode = false;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto value = [&]() -> std::string {
        rlhf::check(i + 1 < argc, a + " needs a value");
        return argv[++i];
      };
      if (a == "--tokenizer") tokenizer_path = value();
      else if (a == "--export-hf") export_dir = value();
      else if (a == "--add-bos") opt.add_bos = true;
      else if (a == "--no-parse-special") opt.parse_special = false;
      else if (a == "--decode") decode = true;
      else throw rlhf::Error("unknown argument " + a);
    }
    rlhf::check(!tokenizer_path.empty(), "--tokenizer PATH is required");
    auto tok = rlhf::load_tokenizer(tokenizer_path);
    if (!export_dir.empty()) {
      std::filesystem::create_directories(export_dir);
      const std::filesystem::path dir(export_dir);
      rlhf::write_file_atomic(dir / "tokenizer.json", tok->to_hf_json().dump(2));
      rlhf::write_file_atomic(dir / "tokenizer_config.json", tok->hf_tokenizer_config().dump(2));
      return 0;
    }
    std::string line;
    for (size_t line_no = 1; std::getline(std::cin, line); ++line_no) {
      json in;
      try {
        in = json::parse(line);
      } catch (const json::exception& e) {
        throw rlhf::Error("stdin line " + std::to_string(line_no) + ": " + e.what());
      }
      if (decode) {
        const std::string text = tok->decode(in.get<std::vector<int32_t>>());
        std::cout << json(text).dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
      } else {
        rlhf::check(in.is_string(), "stdin line " + std::to_string(line_no) + ": expected a JSON string");
        std::cout << json(tok->encode(in.get<std::string>(), opt)).dump() << '\n';
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "rlhf_tokenize_tool: " << e.what() << '\n';
    return 1;
  }
}
