// One request through the farm's rotating proxy with an official SDK, its own
// retries on: `node sdk.mjs anthropic|openai-chat|openai-responses BASE_URL KEY [stream]`.
// Prints {"text", "ms"} on stdout; an SDK error exits non-zero with its message.
import Anthropic from "@anthropic-ai/sdk";
import OpenAI from "openai";

const [sdk, baseURL, apiKey, mode] = process.argv.slice(2);
const stream = mode === "stream";
const started = Date.now();
const messages = [{ role: "user", content: "hi" }];
let text = "";

if (sdk === "anthropic") {
  const client = new Anthropic({ baseURL, apiKey, maxRetries: 3 });
  const request = { model: "claude-x", max_tokens: 16, messages };
  if (stream) {
    for await (const event of client.messages.stream(request)) {
      if (event.type === "content_block_delta") text += event.delta.text;
    }
  } else {
    const message = await client.messages.create(request);
    text = message.content[0].text;
  }
} else if (sdk === "openai-chat") {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 3 });
  if (stream) {
    const chunks = await client.chat.completions.create({ model: "gpt-x", messages, stream: true });
    for await (const chunk of chunks) text += chunk.choices[0]?.delta?.content ?? "";
  } else {
    const completion = await client.chat.completions.create({ model: "gpt-x", messages });
    text = completion.choices[0].message.content;
  }
} else if (sdk === "openai-responses") {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 3 });
  if (stream) {
    const events = await client.responses.create({ model: "gpt-x", input: "hi", stream: true });
    for await (const event of events) {
      if (event.type === "response.output_text.delta") text += event.delta;
    }
  } else {
    const response = await client.responses.create({ model: "gpt-x", input: "hi" });
    text = response.output_text;
  }
} else {
  console.error(`unknown sdk ${sdk}`);
  process.exit(2);
}
console.log(JSON.stringify({ text, ms: Date.now() - started }));
