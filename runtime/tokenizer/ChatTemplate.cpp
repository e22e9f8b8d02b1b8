#include "runtime/tokenizer/ChatTemplate.h"

#include "runtime/tokenizer/Tokenizer.h"

namespace kt::tokenizer {
namespace {

// Turn markers, as the templates spell them (U+FF5C '｜', U+2581 '▁').
constexpr std::string_view kUser = "<｜User｜>";
constexpr std::string_view kAssistant = "<｜Assistant｜>";
constexpr std::string_view kEndOfSentence = "<｜end▁of▁sentence｜>";
constexpr std::string_view kToolCallsBegin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view kToolCallsEnd = "<｜tool▁calls▁end｜>";
constexpr std::string_view kToolCallBegin = "<｜tool▁call▁begin｜>";
constexpr std::string_view kToolCallEnd = "<｜tool▁call▁end｜>";
constexpr std::string_view kToolSep = "<｜tool▁sep｜>";
constexpr std::string_view kToolOutputsBegin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view kToolOutputsEnd = "<｜tool▁outputs▁end｜>";
constexpr std::string_view kToolOutputBegin = "<｜tool▁output▁begin｜>";
constexpr std::string_view kToolOutputEnd = "<｜tool▁output▁end｜>";
constexpr std::string_view kThinkOpen = "<think>\n";
constexpr std::string_view kThinkClose = "</think>";

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// One tool call as the template writes it: type, separator, function name,
// then the arguments in a ```json block.
std::string toolCallBody(const ToolCall &call) {
  return std::string(kToolCallBegin) + call.type + std::string(kToolSep) + call.name +
         "\n```json\n" + call.arguments + "\n```" + std::string(kToolCallEnd);
}

} // namespace

StatusOr<DeepseekChatTemplate> DeepseekChatTemplate::fromJinja(std::string_view jinja,
                                                               std::string bosToken,
                                                               const std::string &source) {
  if (jinja.empty())
    return Status::error(source + " has no chat template; DeepSeek-V3/R1 models ship one in "
                                  "tokenizer_config.json (GGUF: tokenizer.chat_template).");
  if (!contains(jinja, kUser) || !contains(jinja, kAssistant))
    return Status::error(source + ": the chat template is not DeepSeek-V3's or R1's (it has "
                                  "no <｜User｜> and <｜Assistant｜> turn markers); only those "
                                  "templates are implemented.");
  // V3.1 and later close the user turn with <｜Assistant｜> and track the
  // last user message; their history rules are not those implemented here.
  if (contains(jinja, "is_last_user"))
    return Status::error(source + ": the chat template is a DeepSeek-V3.1-style template, "
                                  "which is not implemented; only the V3 and R1 templates "
                                  "are.");
  ChatTemplateStyle style;
  style.dropReasoning = contains(jinja, "split('</think>')");
  style.generationPromptOpensThink = contains(jinja, "<｜Assistant｜><think>");
  style.joinSystemMessages = contains(jinja, "is_first_sp");
  return DeepseekChatTemplate(style, std::move(bosToken));
}

StatusOr<DeepseekChatTemplate> DeepseekChatTemplate::forTokenizer(const Tokenizer &tokenizer) {
  std::string bos;
  if (std::optional<TokenId> id = tokenizer.bosId())
    bos = tokenizer.tokenText(*id);
  return fromJinja(tokenizer.chatTemplate(), std::move(bos), tokenizer.source());
}

StatusOr<std::string> DeepseekChatTemplate::render(const std::vector<ChatMessage> &messages,
                                                   const ChatRenderOptions &options) const {
  auto messageError = [](size_t index, const std::string &what) {
    return Status::error("Chat message " + std::to_string(index) + " " + what);
  };
  std::string systemPrompt;
  bool firstSystem = true;
  for (size_t index = 0; index < messages.size(); ++index) {
    const ChatMessage &message = messages[index];
    if (message.role != "system")
      continue;
    if (!message.content)
      return messageError(index, "(system) has no content.");
    if (!style_.joinSystemMessages)
      systemPrompt = *message.content;
    else if (firstSystem)
      systemPrompt = *message.content;
    else
      systemPrompt += "\n\n" + *message.content;
    firstSystem = false;
  }

  std::string out = bosToken_ + systemPrompt;
  // The template's namespace variables. `firstToolCallSeen` is never reset,
  // as in the Jinja source: only the very first tool call of a conversation
  // opens with <｜Assistant｜><｜tool▁calls▁begin｜>.
  bool firstToolCallSeen = false, inToolOutputs = false, firstToolOutput = true;
  for (size_t index = 0; index < messages.size(); ++index) {
    const ChatMessage &message = messages[index];
    const std::string &role = message.role;
    if (role == "system")
      continue;
    if (role == "user") {
      if (!message.content)
        return messageError(index, "(user) has no content.");
      inToolOutputs = false;
      out += std::string(kUser) + *message.content;
    } else if (role == "assistant" && !message.content) {
      if (message.toolCalls.empty())
        return messageError(index, "(assistant) has neither content nor tool calls.");
      inToolOutputs = false;
      for (const ToolCall &call : message.toolCalls) {
        if (!firstToolCallSeen) {
          out += std::string(kAssistant) + std::string(kToolCallsBegin) + toolCallBody(call);
          firstToolCallSeen = true;
        } else {
          // The template closes the calls block after every later call.
          out +=
              "\n" + toolCallBody(call) + std::string(kToolCallsEnd) + std::string(kEndOfSentence);
        }
      }
    } else if (role == "assistant") {
      if (inToolOutputs) {
        out += std::string(kToolOutputsEnd) + *message.content + std::string(kEndOfSentence);
        inToolOutputs = false;
      } else {
        std::string_view content = *message.content;
        if (style_.dropReasoning) {
          size_t close = content.rfind(kThinkClose);
          if (close != std::string_view::npos)
            content.remove_prefix(close + kThinkClose.size());
        }
        out += std::string(kAssistant);
        out += content;
        out += kEndOfSentence;
      }
    } else if (role == "tool") {
      if (!message.content)
        return messageError(index, "(tool) has no content.");
      inToolOutputs = true;
      if (firstToolOutput) {
        out += std::string(kToolOutputsBegin) + std::string(kToolOutputBegin) + *message.content +
               std::string(kToolOutputEnd);
        firstToolOutput = false;
      } else {
        out +=
            "\n" + std::string(kToolOutputBegin) + *message.content + std::string(kToolOutputEnd);
      }
    } else {
      return messageError(index, "has role '" + role +
                                     "'; the DeepSeek template knows system, user, assistant "
                                     "and tool.");
    }
  }
  if (inToolOutputs)
    out += kToolOutputsEnd;
  if (options.addGenerationPrompt && !inToolOutputs) {
    out += kAssistant;
    if (style_.generationPromptOpensThink || options.forceThink)
      out += kThinkOpen;
  }
  return out;
}

} // namespace kt::tokenizer
