// UTF-8 stepping shared by the tokenizers, the streamer and every writer of model text: one
// strict decoder (no overlongs, no surrogates, nothing above U+10FFFF) so every place agrees
// on what "valid" means, and one rule for text that is not valid.
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace rlhf::utf8 {

enum class Step { Ok, Incomplete, Invalid };
struct StepResult {
  Step step;
  size_t len;  // Ok: bytes of the character; otherwise: the maximal invalid/incomplete subpart
};

// Looks at the character starting at s[i]. Invalid and Incomplete report the "maximal
// subpart" (Unicode's recommended unit for U+FFFD replacement), always at least one byte.
inline StepResult step(std::string_view s, size_t i) {
  auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return {Step::Ok, 1};
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return {Step::Invalid, 1};
  }
  for (size_t k = 1; k < n; ++k) {
    if (i + k >= s.size()) return {Step::Incomplete, k};
    const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xBF;
    if (b(k) < lo_k || b(k) > hi_k) return {Step::Invalid, k};
  }
  return {Step::Ok, n};
}

// Code point of a character that step() reported Ok.
inline char32_t decode(std::string_view s, size_t i, size_t len) {
  auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (len) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

inline std::string encode(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace rlhf::utf8

namespace rlhf {

// Model text is bytes (decode() is byte-exact, and a byte token or a cut can split a
// character); JSON, HTML and terminals need UTF-8. Every writer of model text goes through
// one of these two, which apply the same rule: each maximal invalid subpart (Unicode's unit)
// becomes U+FFFD; valid text is unchanged. The token ids written beside the text stay exact.
inline std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto st = utf8::step(s, i);
    if (st.step == utf8::Step::Ok) out.append(s.substr(i, st.len));
    else out += utf8::kReplacement;
    i += st.len;
  }
  return out;
}

// j.dump(indent), with strings that are not valid UTF-8 written as valid_utf8() writes them
// (nlohmann's replace handler follows the same maximal-subpart rule) instead of throwing
// type_error.316 and losing the whole record.
inline std::string dump_json(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace rlhf
