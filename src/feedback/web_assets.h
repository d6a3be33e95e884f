// The labeling page's files (web/), compiled into the library so `rlhf` is one binary.
#pragma once
#include <optional>
#include <string_view>

namespace rlhf {

struct WebAsset {
  std::string_view body, content_type;
};

// "label.html", "label.js", "label.css"; nullopt for anything else.
std::optional<WebAsset> web_asset(std::string_view name);

}  // namespace rlhf
