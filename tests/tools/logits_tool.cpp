// Test tool: prints a model's logits for given token ids as JSON, so the Python tests can
// compare them with transformers on the same input.
//   rlhf_logits_tool MODEL '[[ids...], ...]'  ->  [[[V floats] per position] per sequence]
#include <iostream>

#include "model/model.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: rlhf_logits_tool MODEL IDS_JSON\n";
    return 2;
  }
  try {
    auto lm = rlhf::load_model(argv[1]);
    auto batch = nlohmann::json::parse(argv[2]);
    nlohmann::json out = nlohmann::json::array();
    torch::NoGradGuard g;
    for (const auto& seq : batch) {
      auto ids = torch::tensor(seq.get<std::vector<int64_t>>()).unsqueeze(0);
      auto logits = lm.model->forward(ids)[0].contiguous();  // (T, V)
      nlohmann::json rows = nlohmann::json::array();
      for (int64_t t = 0; t < logits.size(0); ++t) {
        auto row = logits[t];
        rows.push_back(std::vector<float>(row.data_ptr<float>(), row.data_ptr<float>() + row.numel()));
      }
      out.push_back(rows);
    }
    std::cout << out.dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "rlhf_logits_tool: " << e.what() << "\n";
    return 1;
  }
}
