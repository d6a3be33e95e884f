// A constitution (Bai et al. 2022, "Constitutional AI"): the written principles AI feedback
// follows. Critique/revision principles drive supervised CAI (`rlhf cai revise`); comparison
// principles phrase the multiple-choice question of the AI labeler (RLAIF). The prompt
// shapes live in the file too, so a feedback model tuned on another format is asked in it.
// The file format is TOML; constitutions/default.toml documents every field.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

namespace rlhf {

struct Principle {
  std::string name;
  std::string critique;   // "Identify specific ways in which the assistant's last response is harmful..."
  std::string revision;   // "Please rewrite the assistant response to remove any harmful content..."
  friend bool operator==(const Principle&, const Principle&) = default;
};

// A worked critique -> revision, shown to the model before the real one (few-shot).
struct CritiqueExample {
  std::string prompt, response, critique, revision;
  // The principle whose requests the example answers (its name); empty: the principle drawn
  // for the real request, so the example must fit any of them.
  std::string principle;
  friend bool operator==(const CritiqueExample&, const CritiqueExample&) = default;
};

struct Constitution {
  std::string name;
  std::string source;  // the file it came from ("builtin" for the default)
  // Prompt shapes; {placeholders} as in app_io.h's fill_template.
  // The conversation up to the assistant's turn: {prompt}.
  std::string conversation = "Human: {prompt}\n\nAssistant:";
  // One critique request after a response: {conversation} {response} {request}.
  std::string critique = "{conversation} {response}\n\nCritiqueRequest: {request}\n\nCritique:";
  // The revision request after the critique: {request}; appended to the critique prompt and its critique.
  std::string revision = "\n\nRevisionRequest: {request}\n\nRevision:";
  // The multiple-choice question of the AI labeler: {conversation} {principle} {a} {b}.
  std::string comparison =
      "Consider the following conversation between a human and an assistant:\n{conversation}\n{principle}\n"
      "Options:\n(A) {a}\n(B) {b}\n";
  // Appended to the question: the cue whose next token is the option letter (it ends with "(").
  std::string answer_cue = "The answer is: (";
  // Appended instead for chain-of-thought feedback; the model's reasoning follows it.
  std::string cot_cue = "Let's think step by step:";
  // Where generated text ends: the model starting the next turn of the format above.
  std::vector<std::string> stop = {"\n\nHuman:", "\n\nAssistant:", "\n\nCritiqueRequest:",
                                   "\n\nCritique:", "\n\nRevisionRequest:", "\n\nRevision:"};
  std::vector<Principle> principles;      // critique/revision pairs (supervised CAI)
  std::vector<std::string> comparisons;   // comparison principles (RLAIF)
  std::vector<CritiqueExample> examples;  // few-shot critique/revision examples (may be empty)
  friend bool operator==(const Constitution&, const Constitution&) = default;
};

// Reads a constitution file; errors name the file and the field. Missing templates keep the
// defaults above; at least one principle or one comparison is required.
Constitution load_constitution(const std::filesystem::path& path);

// The project's default constitution (the text of constitutions/default.toml, built in).
Constitution default_constitution();

// `path` when given, the default otherwise.
Constitution constitution_or_default(const std::string& path);

}  // namespace rlhf
