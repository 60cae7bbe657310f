// What the page knows about Keel's runs, kept apart from the React code: run and tool states in words,
// when to resubmit, and how a message is brought up to date when the run's final status is learnt outside
// its stream (GET /api/runs/{id}). Plain functions of UI messages, no React.
import { isToolUIPart, lastAssistantMessageIsCompleteWithApprovalResponses } from "ai";

export const FINAL = new Set([
  "completed",
  "failed",
  "cancelled",
  "step_limit",
  "budget_exceeded",
  "needs_input",
]);

const STATUS_WORDS = {
  running: "running",
  waiting_for_approval: "waiting for your approval",
  waiting_for_input: "waiting for your reply",
  waiting_for_tool_result: "waiting for a result from this app",
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
  step_limit: "stopped at its step limit",
  budget_exceeded: "stopped: over budget",
  needs_input: "stopped: it needs more from you",
};

export function statusInWords(status) {
  return STATUS_WORDS[status] ?? status;
}

export function isFinal(status) {
  return FINAL.has(status);
}

// Keel's `data-run` part: the run's id, status and detail, replaced in place as the status changes. The
// assistant message's id is the run's id.
export function runOf(message) {
  if (message?.role !== "assistant") return null;
  return message.parts.findLast((p) => p.type === "data-run")?.data ?? null;
}

export function toolNameOf(part) {
  return part.type === "dynamic-tool" ? part.toolName : part.type.slice("tool-".length);
}

// The gateway's outcome for a call the run ended without (api/run_stream.py): "<tool> did not finish: the
// run ended as cancelled". Shown as the run ending, not as the tool failing.
const ENDED_WITHOUT_RESULT = /: the run ended as /;

// A sub-agent's run inside the call that started it (Agent.as_tool): Keel streams its progress as the
// call's preliminary outputs, each the child's message so far ({agentRunId, agent, status, detail, parts}).
export function subRunOf(part) {
  const output = part.output;
  return part.preliminary && output && typeof output === "object" && output.agentRunId ? output : null;
}

export function toolStateInWords(part, run) {
  const ended = isFinal(run?.status);
  const child = subRunOf(part);
  if (child) return ended ? "no result: the run ended" : `${child.agent}: ${statusInWords(child.status)}`;
  switch (part.state) {
    case "input-streaming":
      return ended ? "no result: the run ended" : "preparing";
    case "input-available":
      if (ended) return "no result: the run ended";
      if (run?.status === "waiting_for_input" && toolNameOf(part) === "ask_user")
        return "waiting for your reply";
      if (run?.status === "waiting_for_tool_result") return "waiting for a result from this app";
      return "running";
    case "approval-requested":
      return ended ? "not decided: the run ended" : "needs your approval";
    case "approval-responded":
      if (ended) return "no result: the run ended";
      return part.approval?.approved ? "approved · running" : "denied";
    case "output-available":
      return "done";
    case "output-error":
      return ENDED_WITHOUT_RESULT.test(part.errorText ?? "") ? "no result: the run ended" : "failed";
    case "output-denied":
      // Approved here, but the run had ended before the decision reached it (a stale Approve).
      return part.approval?.approved ? "not run: the run ended" : "denied";
    default:
      return part.state;
  }
}

// What the run waits for, as a sentence for someone about to type a new message; null while it does not.
export function waitingExplanation(message) {
  const run = runOf(message);
  if (!run || isFinal(run.status) || run.status === "running") return null;
  const open = message.parts.filter(isToolUIPart);
  if (run.status === "waiting_for_approval") {
    const names = open.filter((p) => p.state === "approval-requested").map(toolNameOf);
    const what = names.length ? names.join(" and ") : "a tool call";
    return `This run waits for your decision on ${what} above: approve or deny it, or cancel the run.`;
  }
  if (run.status === "waiting_for_input") {
    return "This run waits for your reply to its question above: answer it, or cancel the run.";
  }
  return "This run waits for a tool result from this app: cancel the run to start over.";
}

// Resubmit (useChat's sendAutomaticallyWhen) once the last message answers everything its run asked: an
// approval decision, or the reply to Keel's `ask_user` question. Never for a run that has ended: nothing
// would continue it.
export function shouldResubmit({ messages }) {
  const run = runOf(messages.at(-1));
  if (!run || isFinal(run.status)) return false;
  return (
    lastAssistantMessageIsCompleteWithApprovalResponses({ messages }) || questionAnswered(messages.at(-1))
  );
}

function lastStep(message) {
  return message.parts.slice(message.parts.findLastIndex((p) => p.type === "step-start") + 1);
}

function questionAnswered(message) {
  const tools = lastStep(message).filter(isToolUIPart);
  return (
    tools.some((p) => toolNameOf(p) === "ask_user" && p.state === "output-available") &&
    tools.every((p) => p.state.startsWith("output-") || p.state === "approval-responded")
  );
}

// Indexes of text parts a retried model call discarded: Keel follows such a part with a `data-retry`
// part naming it, and the retry writes its text again in a part of its own.
export function discardedTextIndexes(parts) {
  const discarded = new Set();
  parts.forEach((part, index) => {
    if (part.type !== "data-retry" || !part.data?.discardedTextId) return;
    const text = parts.slice(0, index).findLastIndex((p) => p.type === "text");
    if (text !== -1) discarded.add(text);
  });
  return discarded;
}

// The run's final state, learnt from GET /api/runs/{id} because no stream brought it (the run was parked,
// or the page was reloaded after it ended). Only its status changes: a call the run left open then reads
// as ended (toolStateInWords), offers nothing to click, and nothing resubmits for a run that has ended.
export function settleRun(messages, runId, state) {
  const data = { agentRunId: runId, status: state.status, detail: state.detail ?? null };
  return messages.map((message) => {
    if (message.id !== runId) return message;
    const others = message.parts.filter((p) => p.type !== "data-run");
    return { ...message, parts: [...others, { type: "data-run", id: runId, data }] };
  });
}

// A resubmission the gateway refused while the run still waits: the parts that carried the answers go
// back to asking, so the Approve/Deny buttons or the reply box come back and the person can try again.
export function reopenAnswers(messages, runId) {
  return messages.map((message) => {
    if (message.id !== runId) return message;
    const parts = message.parts.map((part) => {
      if (!isToolUIPart(part)) return part;
      if (part.state === "approval-responded") {
        return { ...part, state: "approval-requested", approval: { id: part.approval.id } };
      }
      if (toolNameOf(part) === "ask_user" && part.state === "output-available") {
        return { ...part, state: "input-available", output: undefined };
      }
      return part;
    });
    return { ...message, parts };
  });
}

// An error as a sentence. The AI SDK's transport makes the whole response body the error's message, and
// Keel's gateway answers 4xx/5xx with JSON `{"detail": ...}` (a string, or FastAPI's list of problems).
export function errorSentence(error) {
  const text = (error?.message ?? String(error ?? "")).trim();
  let detail;
  try {
    detail = JSON.parse(text)?.detail;
  } catch {
    return text || "Something went wrong; try again.";
  }
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d?.msg ?? JSON.stringify(d)).join("; ");
  return "The gateway refused the request; try again.";
}

// A stored chat whose last answer was still running when the page went away: that answer is held aside,
// because on mount useChat's resume (GET /api/chat/{id}/stream) replays the whole message from its start.
// If the gateway answers 204 instead (the run has ended meanwhile), the held message comes back and its
// final state is asked for.
export function splitStored(messages) {
  const last = messages.at(-1);
  const run = runOf(last);
  if (run && !isFinal(run.status)) return { messages: messages.slice(0, -1), held: last };
  return { messages, held: null };
}
