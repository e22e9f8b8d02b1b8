// Drives a running `ktrun --serve` with the official openai SDK (npm) and
// prints what it got as one JSON object; serve_test.py --openai-sdk checks it.
//   node openai_sdk_client.mjs SDK_DIR BASE_URL
import { createRequire } from 'node:module';

const [sdkDir, baseURL] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const OpenAI = require(sdkDir);
const client = new OpenAI({ baseURL, apiKey: 'not-checked', maxRetries: 0, timeout: 60000 });
const out = {};

const models = [];
for await (const model of client.models.list()) models.push(model.id);
out.models = models;
const model = models[0];
const messages = [{ role: 'user', content: 'What is 2 plus 2?' }];

const whole = await client.chat.completions.create({ model, messages, max_tokens: 24 });
out.chat = {
  content: whole.choices[0].message.content,
  finish: whole.choices[0].finish_reason,
  usage: whole.usage,
};

async function readStream(stream, piece) {
  const result = { text: '', finish: null, usage: null, chunks: 0 };
  for await (const chunk of stream) {
    result.chunks += 1;
    if (chunk.usage) result.usage = chunk.usage;
    for (const choice of chunk.choices) {
      result.text += piece(choice) ?? '';
      if (choice.finish_reason) result.finish = choice.finish_reason;
    }
  }
  return result;
}

out.chatStream = await readStream(
  await client.chat.completions.create({
    model, messages, max_tokens: 24, stream: true, stream_options: { include_usage: true },
  }),
  (choice) => choice.delta?.content);

const completion = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 16 });
out.completion = {
  text: completion.choices[0].text,
  finish: completion.choices[0].finish_reason,
  usage: completion.usage,
};
out.completionStream = await readStream(
  await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 16, stream: true }),
  (choice) => choice.text);

try {
  await client.chat.completions.create({ model, messages, max_tokens: -1 });
  out.error = null;
} catch (error) {
  out.error = { status: error.status, code: error.code, param: error.param, type: error.type };
}

// A client that gives up mid-stream: the server must free the slot.
const controller = new AbortController();
const long = await client.completions.create(
  { model, prompt: 'abc', max_tokens: 3000, stream: true, ignore_eos: true },
  { signal: controller.signal });
let received = 0;
let ended = 'completed';
try {
  for await (const chunk of long) {
    received += 1;
    if (received === 3) controller.abort();
  }
  if (controller.signal.aborted) ended = 'aborted'; // the SDK ends the loop quietly
} catch (error) {
  ended = error.name;
}
out.aborted = { received, ended };

console.log(JSON.stringify(out));
