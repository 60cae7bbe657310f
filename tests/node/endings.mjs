// The real AI SDK Chat (ai 5, 6 and 7) meeting runs that end while a tool call is open, for
// tests/test_run_endings.py. The test ends each run itself (cancels it, terminates it through Temporal,
// lets its time run out) between the client's steps, so this driver takes one JSON command a line on stdin
// and answers each with one JSON line on stdout (same `id`); commands run concurrently.
//
//   {"id", "op": "start", "pkg", "url", "text", "body", "until": "ready" | "tool-running"}
//     A new chat sends `text` (with `body`, e.g. the purpose). Answers once the chat is idle (the run waits
//     for someone, or has ended) or, with "tool-running", once a tool part is running while the stream flows:
//     {"id", "runId", "status"}.
//   {"id", "op": "settle", "chat": <the start command's id>, "answer": {"approved"} | {"output"} | null}
//     Answers the open tool call as a person would (Approve, a reply, a client tool's output) and waits
//     until the chat is idle: {"id", "status", "error", "message", "posts", "wouldResubmit"}, where `posts`
//     counts POST /api/chat since the answer and `wouldResubmit` is what the chat's sendAutomaticallyWhen
//     (the AI SDK's own helpers) says of the final messages.

import { createInterface } from "node:readline";

import { chatClass, newId } from "./chat.mjs";

const chats = new Map();
// Generous: these wait for runs on a busy machine; a client caught in a loop never settles however long.
const SETTLE_MS = 30000;

function sendAutomaticallyWhen(ai) {
  // What a useChat app uses: approvals (ai 6+) and client-side tool outputs both resubmit.
  return (options) =>
    Boolean(ai.lastAssistantMessageIsCompleteWithApprovalResponses?.(options)) ||
    ai.lastAssistantMessageIsCompleteWithToolCalls(options);
}

// fetch that counts the chat's POSTs and the requests whose response has not arrived yet.
function countingFetch(counter) {
  return async (input, init) => {
    if ((init?.method ?? "GET") === "POST") counter.posts++;
    counter.pending++;
    try {
      return await fetch(input, init);
    } finally {
      counter.pending--;
    }
  };
}

const isIdle = ({ chat, counter }) =>
  counter.posts > 0 && counter.pending === 0 && (chat.status === "ready" || chat.status === "error");

const toolRunning = ({ chat }) =>
  chat.status === "streaming" &&
  chat.lastMessage?.parts.some((p) => p.type.startsWith("tool-") && p.state === "input-available");

// Idle on two looks a tick apart: an automatic resubmission starts within microtasks of the last one ending.
async function settled(entry, also = () => false, timeoutMs = SETTLE_MS) {
  const deadline = Date.now() + timeoutMs;
  let idleBefore = false;
  while (Date.now() < deadline) {
    if (also(entry)) return true;
    const idle = isIdle(entry);
    if (idle && idleBefore) return true;
    idleBefore = idle;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return false;
}

const describe = ({ chat, counter }) =>
  JSON.stringify({
    status: chat.status,
    posts: counter.posts,
    pending: counter.pending,
    parts: chat.lastMessage?.parts.map((p) => p.state ?? p.data?.status ?? p.type),
  });

const openPart = (message) =>
  message.parts.find(
    (p) => p.type.startsWith("tool-") && (p.state === "approval-requested" || p.state === "input-available"),
  );

const COMMANDS = {
  async start({ id, pkg, url, text, body, until }) {
    const ai = await import(pkg);
    const Chat = chatClass(ai);
    const counter = { posts: 0, pending: 0 };
    const chat = new Chat({
      id: newId("chat"),
      transport: new ai.DefaultChatTransport({ api: `${url}/api/chat`, body, fetch: countingFetch(counter) }),
      sendAutomaticallyWhen: sendAutomaticallyWhen(ai),
    });
    const entry = { ai, chat, counter };
    chats.set(id, entry);
    chat.sendMessage({ text });
    const ready = await settled(entry, until === "tool-running" ? toolRunning : undefined);
    if (!ready) throw new Error(`the chat never became ready: ${describe(entry)}`);
    return { runId: chat.lastMessage?.role === "assistant" ? chat.lastMessage.id : null, status: chat.status };
  },

  async settle({ chat: key, answer }) {
    const entry = chats.get(key);
    const { chat, counter, ai } = entry;
    await settled(entry);
    const before = counter.posts;
    if (answer) {
      const part = openPart(chat.lastMessage);
      if (!part) throw new Error("no open tool call to answer");
      if ("approved" in answer) {
        await chat.addToolApprovalResponse({ id: part.approval.id, approved: answer.approved });
      } else {
        const tool = part.type.slice("tool-".length);
        await chat.addToolOutput({ tool, toolCallId: part.toolCallId, output: answer.output });
      }
    }
    const idle = await settled(entry);
    return {
      idle,
      status: chat.status,
      error: chat.error ? String(chat.error.message ?? chat.error) : null,
      message: chat.lastMessage,
      posts: counter.posts - before,
      wouldResubmit: sendAutomaticallyWhen(ai)({ messages: chat.messages }),
    };
  },
};

function reply(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  COMMANDS[command.op](command).then(
    (result) => reply({ id: command.id, ...result }),
    (error) => reply({ id: command.id, failure: String(error?.stack ?? error) }),
  );
}
