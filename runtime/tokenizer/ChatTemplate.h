// The DeepSeek-V3/R1 chat template, implemented in C++ rather than by a
// Jinja interpreter: it renders exactly what the Jinja templates shipped in
// DeepSeek-V3's and DeepSeek-R1's tokenizer_config.json render through
// Hugging Face transformers' apply_chat_template (golden tests check this).
//
// The template (both models):
//   <bos> + the system messages joined by "\n\n"
//   then per message:  user      -> "<｜User｜>" + content
//                      assistant -> "<｜Assistant｜>" + content + "<｜end▁of▁sentence｜>"
//                      tool      -> tool outputs wrapped in <｜tool▁output...｜> tokens
//   and, with add_generation_prompt, a final "<｜Assistant｜>".
// R1 differs in two points: an assistant message keeps only what follows
// its last "</think>" (earlier turns' reasoning is dropped from the
// history), and the generation prompt is "<｜Assistant｜><think>\n".
//
// `forceThink` is KTransformers' --force_think: it appends "<think>\n" after
// the final "<｜Assistant｜>" so that R1 starts with its reasoning instead of
// skipping it (already there when the template opens the block itself).
#pragma once

#include "runtime/support/Status.h"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kt::tokenizer {

class Tokenizer;

struct ToolCall {
  std::string type = "function";
  std::string name;
  std::string arguments; // JSON text, inserted verbatim
};

struct ChatMessage {
  std::string role; // "system", "user", "assistant" or "tool"
  // Absent only for an assistant message that consists of tool calls.
  std::optional<std::string> content;
  std::vector<ToolCall> toolCalls; // assistant messages without content

  static ChatMessage system(std::string text) { return {"system", std::move(text), {}}; }
  static ChatMessage user(std::string text) { return {"user", std::move(text), {}}; }
  static ChatMessage assistant(std::string text) { return {"assistant", std::move(text), {}}; }
  static ChatMessage tool(std::string text) { return {"tool", std::move(text), {}}; }
  static ChatMessage toolCalling(std::vector<ToolCall> calls) {
    return {"assistant", std::nullopt, std::move(calls)};
  }
};

// The points where the DeepSeek template versions differ.
struct ChatTemplateStyle {
  // R1: an assistant message is cut to what follows its last "</think>".
  bool dropReasoning = false;
  // R1 (its updated template): the generation prompt opens the
  // reasoning block, "<｜Assistant｜><think>\n".
  bool generationPromptOpensThink = false;
  // V3 and R1 join all system messages with "\n\n"; the older template of
  // the R1 distills keeps only the last one.
  bool joinSystemMessages = true;

  static ChatTemplateStyle deepseekV3() { return {}; }
  static ChatTemplateStyle deepseekR1() { return {true, true, true}; }
};

struct ChatRenderOptions {
  bool addGenerationPrompt = true;
  bool forceThink = false;
};

class DeepseekChatTemplate {
public:
  // `bosToken` is the text of the beginning-of-sentence token, which the
  // template puts first.
  DeepseekChatTemplate(ChatTemplateStyle style, std::string bosToken)
      : style_(style), bosToken_(std::move(bosToken)) {}

  // Recognizes a DeepSeek-V3/R1 template in Jinja source (tokenizer_config's
  // chat_template or GGUF's tokenizer.chat_template) and its style. Fails,
  // naming `source`, for templates of other model families and for the
  // V3.1-style templates, which place turn markers differently.
  static StatusOr<DeepseekChatTemplate> fromJinja(std::string_view jinja, std::string bosToken,
                                                  const std::string &source);
  // The template shipped with the tokenizer's vocabulary.
  static StatusOr<DeepseekChatTemplate> forTokenizer(const Tokenizer &tokenizer);

  // The prompt text. Encode it with EncodeOptions::parseSpecial so that the
  // turn markers become their tokens. Fails on an unknown role or a message
  // without the content its role needs.
  StatusOr<std::string> render(const std::vector<ChatMessage> &messages,
                               const ChatRenderOptions &options = {}) const;

  const ChatTemplateStyle &style() const { return style_; }

private:
  ChatTemplateStyle style_;
  std::string bosToken_;
};

} // namespace kt::tokenizer
