#include "runtime/tokenizer/ChatTemplate.h"

#include "runtime/tokenizer/Tokenizer.h"
#include "test/unit/tokenizer/TokenizerTestUtil.h"

namespace kt::tokenizer {
namespace {

using Messages = std::vector<ChatMessage>;

const std::string kBos = "<｜begin▁of▁sentence｜>";

std::string render(const DeepseekChatTemplate &chat, const Messages &messages,
                   ChatRenderOptions options = {}) {
  StatusOr<std::string> text = chat.render(messages, options);
  EXPECT_TRUE(text.ok()) << (text.ok() ? "" : text.message());
  return text.ok() ? *text : std::string();
}

const DeepseekChatTemplate v3(ChatTemplateStyle::deepseekV3(), kBos);
const DeepseekChatTemplate r1(ChatTemplateStyle::deepseekR1(), kBos);

TEST(ChatTemplate, RendersASingleUserTurnWithTheGenerationPrompt) {
  EXPECT_EQ(render(v3, {ChatMessage::user("Hello")}), kBos + "<｜User｜>Hello<｜Assistant｜>");
  EXPECT_EQ(render(v3, {ChatMessage::user("Hello")}, {/*addGenerationPrompt=*/false}),
            kBos + "<｜User｜>Hello");
}

TEST(ChatTemplate, PutsSystemMessagesFirstJoinedByABlankLine) {
  Messages messages = {ChatMessage::user("Hi"), ChatMessage::system("Be brief."),
                       ChatMessage::system("Answer in French.")};
  EXPECT_EQ(render(v3, messages),
            kBos + "Be brief.\n\nAnswer in French.<｜User｜>Hi<｜Assistant｜>");
  ChatTemplateStyle lastSystemOnly;
  lastSystemOnly.joinSystemMessages = false;
  EXPECT_EQ(render(DeepseekChatTemplate(lastSystemOnly, kBos), messages),
            kBos + "Answer in French.<｜User｜>Hi<｜Assistant｜>");
}

TEST(ChatTemplate, EndsEachAssistantTurnWithEndOfSentence) {
  Messages messages = {ChatMessage::user("q1"), ChatMessage::assistant("a1"),
                       ChatMessage::user("q2")};
  EXPECT_EQ(render(v3, messages), kBos + "<｜User｜>q1<｜Assistant｜>a1<｜end▁of▁sentence｜>"
                                         "<｜User｜>q2<｜Assistant｜>");
}

TEST(ChatTemplate, R1DropsEarlierReasoningAndOpensANewOne) {
  Messages messages = {ChatMessage::user("2+2?"),
                       ChatMessage::assistant("<think>\nadd them\n</think>\n\n4"),
                       ChatMessage::user("and 3+3?")};
  EXPECT_EQ(render(r1, messages), kBos + "<｜User｜>2+2?<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>"
                                         "<｜User｜>and 3+3?<｜Assistant｜><think>\n");
  // Only what follows the last </think> is kept.
  EXPECT_EQ(render(r1, {ChatMessage::assistant("a</think>b</think>c")}, {false}),
            kBos + "<｜Assistant｜>c<｜end▁of▁sentence｜>");
  // V3 keeps the reasoning.
  EXPECT_EQ(render(v3, messages), kBos + "<｜User｜>2+2?<｜Assistant｜><think>\nadd them\n"
                                         "</think>\n\n4<｜end▁of▁sentence｜><｜User｜>and 3+3?"
                                         "<｜Assistant｜>");
}

TEST(ChatTemplate, ForceThinkOpensTheReasoningBlockOnce) {
  Messages messages = {ChatMessage::user("Why?")};
  EXPECT_EQ(render(v3, messages, {true, /*forceThink=*/true}),
            kBos + "<｜User｜>Why?<｜Assistant｜><think>\n");
  EXPECT_EQ(render(r1, messages, {true, /*forceThink=*/true}),
            kBos + "<｜User｜>Why?<｜Assistant｜><think>\n");
  // Without a generation prompt there is no assistant turn to open.
  EXPECT_EQ(render(v3, messages, {false, /*forceThink=*/true}), kBos + "<｜User｜>Why?");
}

TEST(ChatTemplate, RendersToolCallsAndOutputsAsTheJinjaTemplateDoes) {
  Messages messages = {
      ChatMessage::user("Weather?"),
      ChatMessage::toolCalling(
          {{"function", "get_weather", R"({"city": "Paris"})"}, {"function", "get_time", "{}"}}),
      ChatMessage::tool("sunny"),
      ChatMessage::tool("noon"),
      ChatMessage::assistant("Sunny at noon."),
      ChatMessage::user("Thanks")};
  EXPECT_EQ(render(v3, messages),
            kBos + "<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>"
                   "function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\"}\n```"
                   "<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n"
                   "```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
                   "<｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny"
                   "<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>noon<｜tool▁output▁end｜>"
                   "<｜tool▁outputs▁end｜>Sunny at noon.<｜end▁of▁sentence｜><｜User｜>Thanks"
                   "<｜Assistant｜>");
  // Pending tool outputs are closed and no generation prompt follows.
  EXPECT_EQ(render(v3, {ChatMessage::user("x"), ChatMessage::tool("out")}),
            kBos + "<｜User｜>x<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>out"
                   "<｜tool▁output▁end｜><｜tool▁outputs▁end｜>");
}

TEST(ChatTemplate, RefusesMessagesTheTemplateCannotRender) {
  StatusOr<std::string> text = v3.render({ChatMessage{"developer", "x", {}}});
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.message().find("'developer'"), std::string::npos) << text.message();
  EXPECT_FALSE(v3.render({ChatMessage{"user", std::nullopt, {}}}).ok());
  EXPECT_FALSE(v3.render({ChatMessage{"assistant", std::nullopt, {}}}).ok());
}

TEST(ChatTemplate, RecognizesTheDeepseekTemplates) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  // The V3 template shipped in tokenizer_config.json.
  StatusOr<DeepseekChatTemplate> chat = DeepseekChatTemplate::forTokenizer(test::jsonTokenizer());
  ASSERT_TRUE(chat.ok()) << chat.message();
  EXPECT_FALSE(chat->style().dropReasoning);
  EXPECT_FALSE(chat->style().generationPromptOpensThink);
  EXPECT_TRUE(chat->style().joinSystemMessages);
  EXPECT_EQ(render(*chat, {ChatMessage::user("Hi")}), kBos + "<｜User｜>Hi<｜Assistant｜>");

  // R1's template is V3's with the reasoning cut and the <think> prompt.
  std::string r1Jinja = test::jsonTokenizer().chatTemplate();
  std::string assistantTurn =
      "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}";
  size_t at = r1Jinja.find(assistantTurn);
  ASSERT_NE(at, std::string::npos);
  r1Jinja.replace(at, assistantTurn.size(),
                  "{% set content = message['content'] %}{% if '</think>' in content %}"
                  "{% set content = content.split('</think>')[-1] %}{% endif %}"
                  "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}");
  std::string prompt = "{{'<｜Assistant｜>'}}{% endif %}";
  at = r1Jinja.find(prompt);
  ASSERT_NE(at, std::string::npos);
  r1Jinja.replace(at, prompt.size(), "{{'<｜Assistant｜><think>\\n'}}{% endif %}");
  chat = DeepseekChatTemplate::fromJinja(r1Jinja, kBos, "r1");
  ASSERT_TRUE(chat.ok()) << chat.message();
  EXPECT_TRUE(chat->style().dropReasoning);
  EXPECT_TRUE(chat->style().generationPromptOpensThink);
}

TEST(ChatTemplate, RefusesTemplatesOfOtherModels) {
  StatusOr<DeepseekChatTemplate> chat = DeepseekChatTemplate::fromJinja(
      "{% for m in messages %}<|im_start|>{{m.role}}\n{{m.content}}<|im_end|>{% endfor %}", kBos,
      "qwen.gguf");
  ASSERT_FALSE(chat.ok());
  EXPECT_NE(chat.message().find("qwen.gguf"), std::string::npos);
  EXPECT_FALSE(DeepseekChatTemplate::fromJinja("", kBos, "empty.gguf").ok());
  EXPECT_FALSE(DeepseekChatTemplate::fromJinja(
                   "{%- set ns.is_last_user = true -%}<｜User｜><｜Assistant｜>", kBos, "v31")
                   .ok());
}

TEST(ChatTemplate, RenderedPromptsEncodeToTurnMarkerTokens) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  std::string prompt = render(v3, {ChatMessage::system("S"), ChatMessage::user("Hi")});
  std::vector<TokenId> ids = test::encodeOrDie(test::jsonTokenizer(), prompt, {true});
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 0);                                       // <｜begin▁of▁sentence｜>
  EXPECT_EQ(ids.back(), 128804);                                   // <｜Assistant｜>
  EXPECT_NE(std::find(ids.begin(), ids.end(), 128803), ids.end()); // <｜User｜>
}

} // namespace
} // namespace kt::tokenizer
