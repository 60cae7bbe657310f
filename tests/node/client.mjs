// Drives Keel's gateway with the real Vercel AI SDK client, as tests/test_ai_sdk_client.py asks.
//
//   node client.mjs <ai5|ai6|ai7> <scenario> [<scenario> ...]
//
// KEEL_URL is the gateway, KEEL_SLOW_URL one whose model writes slowly (scripted:slow), so a stream can be
// cut in the middle of an answer. Scenarios run concurrently, each in a chat of its own. The result is
// one JSON object on stdout: {scenario: what it saw} or {scenario: {error}}; pytest asserts on it.

import { chatClass, newId, until, userMessage } from "./chat.mjs";

const [pkg, ...scenarios] = process.argv.slice(2);
const ai = await import(pkg);
const { DefaultChatTransport, readUIMessageStream } = ai;
const Chat = chatClass(ai);
const URL_ = process.env.KEEL_URL;
const SLOW_URL = process.env.KEEL_SLOW_URL;

const transport = (url, body = {}) => new DefaultChatTransport({ api: `${url}/api/chat`, body });

// The assistant message readUIMessageStream assembles, last snapshot wins.
async function assemble(stream, message) {
  let last;
  for await (const snapshot of readUIMessageStream({
    stream,
    message,
    terminateOnError: true,
    onError: () => {},
  })) {
    last = snapshot;
  }
  return last;
}

async function send(url, text, body = {}) {
  const chatId = newId("chat");
  const stream = await transport(url, body).sendMessages({
    chatId,
    trigger: "submit-message",
    messageId: undefined,
    messages: [userMessage(text)],
    abortSignal: undefined,
  });
  return { chatId, message: await assemble(stream) };
}

const SCENARIOS = {
  // A plain answer: one step, text.
  async plain() {
    return await send(URL_, "hello there");
  },

  // A tool call and its result, then the answer.
  async tools() {
    return await send(URL_, "calculate (2 + 3) * 4");
  },

  // The approval round trip as useChat does it: the stream stops at the approval request, the user
  // approves with addToolApprovalResponse, and sendAutomaticallyWhen resubmits; the same run goes on.
  async approval() {
    const chat = new Chat({
      id: newId("chat"),
      transport: transport(URL_, { purpose: "learnpack-lesson-writer" }),
      sendAutomaticallyWhen: ai.lastAssistantMessageIsCompleteWithApprovalResponses,
    });
    await chat.sendMessage({ text: "plan, write and publish a lesson on closures" });
    if (chat.status === "error") throw chat.error;
    const asked = structuredClone(chat.lastMessage);
    const request = asked.parts.find((p) => p.type === "tool-publish_package");
    await chat.addToolApprovalResponse({ id: request.approval.id, approved: true, reason: "looks right" });
    await until(
      () =>
        chat.status === "error" ||
        (chat.status === "ready" &&
          chat.lastMessage.parts.some((p) => p.type === "tool-publish_package" && p.state === "output-available") &&
          chat.lastMessage.parts.some((p) => p.type === "data-run" && p.data.status === "completed")),
      "the run to finish after the approval",
    );
    if (chat.status === "error") throw chat.error;
    return { chatId: chat.id, asked, messages: chat.messages };
  },

  // ai@5 predates tool approvals: its schema rejects the tool-approval-request chunk.
  async "approval-unsupported"() {
    try {
      await send(URL_, "plan, write and publish a lesson on old clients", { purpose: "learnpack-lesson-writer" });
    } catch (error) {
      return { error: String(error && error.message ? error.message : error) };
    }
    return { error: null };
  },

  // A connection dropped mid-answer, then the AI SDK's resume (GET /api/chat/{id}/stream) while the run
  // is still writing; once it has finished there is nothing to resume.
  async resume() {
    const chatId = newId("chat");
    const abort = new AbortController();
    const stream = await transport(SLOW_URL).sendMessages({
      chatId,
      trigger: "submit-message",
      messageId: undefined,
      messages: [userMessage("hello there, tell me everything")],
      abortSignal: abort.signal,
    });
    let partial = "";
    try {
      for await (const snapshot of readUIMessageStream({ stream })) {
        partial = snapshot.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
        if (partial.length >= 20) {
          abort.abort();
          break;
        }
      }
    } catch {
      // the abort
    }
    const resumed = await transport(SLOW_URL).reconnectToStream({ chatId });
    if (resumed === null) throw new Error("nothing to resume while the run was still writing");
    const message = await assemble(resumed);
    const afterwards = await transport(SLOW_URL).reconnectToStream({ chatId });
    const unknown = await transport(SLOW_URL).reconnectToStream({ chatId: newId("chat") });
    return { chatId, partial, message, resumedAfterFinish: afterwards !== null, resumedUnknown: unknown !== null };
  },
};

const results = {};
await Promise.all(
  scenarios.map(async (name) => {
    try {
      results[name] = await SCENARIOS[name]();
    } catch (error) {
      results[name] = { error: String(error && error.stack ? error.stack : error) };
    }
  }),
);
process.stdout.write(JSON.stringify(results));
