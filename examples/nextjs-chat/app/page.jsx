"use client";

// A chat on Keel with the AI SDK's own useChat: streamed Markdown answers, tool calls in words, approvals
// (addToolApprovalResponse + sendAutomaticallyWhen), the agent's questions (addToolOutput), cancel, and
// resume after a reload (resume: true). Keel's gateway needs no changes for any of it; the page only has
// to remember that a run can end where no stream shows it (a cancel while it waits for someone, a reload
// after it ended), and then ask the gateway for the run's final state.
import { useChat } from "@ai-sdk/react";
import { isToolUIPart } from "ai";
import { useEffect, useMemo, useRef, useState } from "react";

import {
  discardedTextIndexes,
  errorSentence,
  isFinal,
  reopenAnswers,
  runOf,
  settleRun,
  shouldResubmit,
  splitStored,
  statusInWords,
  subRunOf,
  toolNameOf,
  toolStateInWords,
  waitingExplanation,
} from "./keel";
import { Markdown } from "./markdown";
import { approvalShown, decisionMade, report as reportTelemetry } from "./telemetry";
import { KeelChatTransport } from "./transport";

const STORE = "keel-nextjs-chat";
// While a cancelled run has no stream open, its state is asked for this often, for at most this long.
const POLL_MS = 300;
const POLL_LIMIT_MS = 60_000;

export default function Page() {
  // The chat's id and history live in sessionStorage, so a reload resumes the same chat. Read them after
  // mount: the server render has no sessionStorage.
  const [saved, setSaved] = useState(null);
  useEffect(() => {
    let value = null;
    try {
      value = JSON.parse(sessionStorage.getItem(STORE) ?? "null");
    } catch {}
    setSaved(value?.id ? value : { id: crypto.randomUUID(), messages: [] });
  }, []);
  if (!saved) return null;
  return (
    <Chat
      key={saved.id}
      saved={saved}
      onNewChat={() => {
        sessionStorage.removeItem(STORE);
        setSaved({ id: crypto.randomUUID(), messages: [] });
      }}
    />
  );
}

async function readRunState(runId) {
  const response = await fetch(`/api/runs/${encodeURIComponent(runId)}`, { cache: "no-store" });
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function textOf(message) {
  return message.parts
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("");
}

function Chat({ saved, onNewChat }) {
  const [purpose, setPurpose] = useState(saved.purpose ?? "assistant");
  const purposeRef = useRef(purpose);
  purposeRef.current = purpose;
  // An answer that was still running when the page went away waits here for the resume's outcome.
  const [stored] = useState(() => splitStored(saved.messages ?? []));
  const held = useRef(stored.held);
  const handlers = useRef({});
  const transport = useMemo(
    () =>
      new KeelChatTransport({
        api: "/api/chat",
        // `purpose` is Keel's own field of the POST /api/chat body; useChat sends the rest.
        body: () => ({ purpose: purposeRef.current }),
        onResume: (found) => handlers.current.onResume(found),
      }),
    [],
  );
  const { messages, setMessages, sendMessage, addToolApprovalResponse, addToolOutput, status, clearError } =
    useChat({
      id: saved.id,
      messages: stored.messages,
      transport,
      resume: true, // GET /api/chat/{id}/stream on mount: a reload mid-run picks the stream up again
      sendAutomaticallyWhen: shouldResubmit,
      onError: (error) => handlers.current.onError(error),
    });

  const [input, setInput] = useState("");
  const [notice, setNotice] = useState(null);
  const [cancelling, setCancelling] = useState(false);
  const busy = status === "submitted" || status === "streaming";
  const last = messages.at(-1);
  const lastRun = runOf(last);
  const active = lastRun !== null && !isFinal(lastRun.status);
  const waiting = busy ? null : waitingExplanation(last);

  // What the polling below reads: this render's status and messages, not those of the render it began in.
  const live = useRef({});
  live.current = { status, messages };
  const mounted = useRef(true);
  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
    };
  }, []);

  useEffect(() => {
    if (held.current && messages.some((m) => m.id === held.current.id)) held.current = null;
    const kept = held.current ? [...messages, held.current] : messages;
    sessionStorage.setItem(STORE, JSON.stringify({ id: saved.id, purpose, messages: kept }));
  }, [saved.id, purpose, messages]);

  // The run's final state when no stream will bring it: wait while a stream is open (its last chunks say
  // how the run ended), otherwise ask GET /api/runs/{id} until the run is final, and show that. False if
  // the run has not ended within the time allowed.
  async function showFinalState(runId) {
    const deadline = Date.now() + POLL_LIMIT_MS;
    while (mounted.current && Date.now() < deadline) {
      const now = live.current;
      if (isFinal(runOf(now.messages.find((m) => m.id === runId))?.status)) return true;
      if (now.status !== "submitted" && now.status !== "streaming") {
        const state = await readRunState(runId);
        if (isFinal(state.status)) {
          setMessages((current) => settleRun(current, runId, state));
          return true;
        }
      }
      await pause(POLL_MS);
    }
    return !mounted.current;
  }

  function report(error) {
    const sentence = errorSentence(error);
    setNotice(sentence);
    // An error shown about a run is part of what the person lived through (telemetry.js).
    const run = runOf(live.current.messages.findLast((m) => runOf(m)));
    reportTelemetry(run?.agentRunId, "error", null, sentence);
  }

  handlers.current.onResume = (found) => {
    const message = held.current;
    if (!message || found) return; // a replay rebuilds the held answer from its start
    held.current = null;
    setMessages((current) => [...current, message]);
    showFinalState(message.id).catch(report);
  };

  handlers.current.onError = (error) => {
    report(error);
    let rejected = null;
    setMessages((current) => {
      const lastNow = current.at(-1);
      if (lastNow?.role !== "user") return current;
      rejected = lastNow; // refused before any answer began: take it back, the text returns to the input
      return current.slice(0, -1);
    });
    if (rejected) {
      const text = textOf(rejected);
      setInput((typed) => typed || text);
      return;
    }
    const run = runOf(live.current.messages.at(-1));
    if (run && !isFinal(run.status)) reconcile(run.agentRunId).catch(report);
  };

  // A resubmission was refused or broke off: the run's real state decides what the page offers again.
  async function reconcile(runId) {
    const state = await readRunState(runId);
    setMessages((current) =>
      isFinal(state.status) ? settleRun(current, runId, state) : reopenAnswers(current, runId),
    );
  }

  async function cancel(runId) {
    setCancelling(true);
    clearNotice();
    try {
      const response = await fetch(`/api/runs/${encodeURIComponent(runId)}/cancel`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ reason: "cancelled from the Next.js example" }),
      });
      // 202: the run is stopping; 409: it had ended already. Either way its final state is what to show.
      if (!response.ok && response.status !== 409) throw new Error(await response.text());
      if (!(await showFinalState(runId))) {
        setNotice(
          "Keel accepted the cancel, but the run has not stopped yet: reload the page to see its status.",
        );
      }
    } catch (error) {
      report(error);
    } finally {
      if (mounted.current) setCancelling(false);
    }
  }

  function submit(event) {
    event.preventDefault();
    const text = input.trim();
    if (!text || busy) return;
    clearNotice();
    setInput("");
    sendMessage({ text });
  }

  function clearNotice() {
    setNotice(null);
    clearError();
  }

  return (
    <main>
      <header>
        <h1>Keel · useChat</h1>
        <label>
          Agent{" "}
          <select id="purpose" value={purpose} onChange={(e) => setPurpose(e.target.value)}>
            <option value="assistant">assistant</option>
            <option value="learnpack-lesson-writer">learnpack-lesson-writer</option>
            <option value="course-editor">course-editor (delegates)</option>
          </select>
        </label>
        <button type="button" onClick={onNewChat} disabled={busy}>
          New chat
        </button>
      </header>

      <ol className="transcript">
        {messages.map((message) =>
          message.role === "assistant" ? (
            <AssistantMessage
              key={message.id}
              message={message}
              ready={!busy}
              onDecide={(approvalId, approved) => {
                clearNotice();
                addToolApprovalResponse({ id: approvalId, approved });
              }}
              onAnswer={(toolCallId, text) => {
                clearNotice();
                addToolOutput({ tool: "ask_user", toolCallId, output: text });
              }}
            />
          ) : (
            <li key={message.id} className={`msg ${message.role}`}>
              <div className="bubble">{textOf(message)}</div>
            </li>
          ),
        )}
      </ol>

      <form className="composer" onSubmit={submit}>
        {waiting && (
          <p className="waiting" role="status">
            {waiting}
          </p>
        )}
        {notice && (
          <p className="error" role="alert">
            {notice}
          </p>
        )}
        <div className="row">
          <input
            id="input"
            aria-label="Message"
            value={input}
            onChange={(e) => setInput(e.target.value)}
            placeholder="Message Keel…"
            autoComplete="off"
          />
          {active && (
            <button
              type="button"
              className="deny"
              disabled={cancelling}
              onClick={() => cancel(lastRun.agentRunId)}
            >
              {cancelling ? "Cancelling…" : "Cancel run"}
            </button>
          )}
          <button id="send" type="submit" disabled={busy}>
            Send
          </button>
        </div>
      </form>
    </main>
  );
}

function AssistantMessage({ message, ready, onDecide, onAnswer }) {
  const run = runOf(message);
  const discarded = discardedTextIndexes(message.parts);
  return (
    <li className="msg assistant" data-run-id={run?.agentRunId}>
      <div className="bubble">
        {message.parts.map((part, index) => {
          const key = part.toolCallId ?? `${part.type}-${index}`;
          if (part.type === "text") {
            if (!part.text) return null;
            return <Text key={key} text={part.text} discarded={discarded.has(index)} />;
          }
          if (part.type === "reasoning" && part.text) {
            return (
              <details key={key} className="reasoning">
                <summary>Reasoning</summary>
                {part.text}
              </details>
            );
          }
          if (!isToolUIPart(part)) return null; // step-start, data-run, data-retry
          return (
            <ToolCall key={key} part={part} run={run} ready={ready} onDecide={onDecide} onAnswer={onAnswer} />
          );
        })}
      </div>
      {run && (
        <div className="runline" data-status={run.status}>
          <code>{run.agentRunId}</code> · <span className="status">{statusInWords(run.status)}</span>
          {run.detail ? <span className="detail"> — {run.detail}</span> : null}
        </div>
      )}
    </li>
  );
}

function Text({ text, discarded }) {
  if (discarded) {
    // A model call that was retried: what it had written is not part of the answer.
    return (
      <div className="text discarded" data-discarded="true">
        <span className="label">Discarded: the model call was retried</span>
        <del>{text}</del>
      </div>
    );
  }
  return (
    <div className="text">
      <Markdown text={text} />
    </div>
  );
}

function Field({ label, value }) {
  return (
    <div className="field">
      <div className="label">{label}</div>
      <Value value={value} />
    </div>
  );
}

// An object shows each field under its name, strings as they read (a lesson's Markdown keeps its lines);
// anything else shows as JSON.
function Value({ value }) {
  const show = (v) => (typeof v === "string" ? v : JSON.stringify(v, null, 2));
  const isObject = value !== null && typeof value === "object" && !Array.isArray(value);
  if (!isObject || Object.keys(value).length === 0) return <pre className="value">{show(value)}</pre>;
  return (
    <dl className="value">
      {Object.entries(value).map(([key, item]) => (
        <div key={key}>
          <dt>{key}</dt>
          <dd>{show(item)}</dd>
        </div>
      ))}
    </dl>
  );
}

// The last progress seen of each sub-agent call, so its work stays visible (folded) once its result has
// replaced the preliminary output in useChat's message.
const lastProgress = new Map();

function ToolCall({ part, run, ready, onDecide, onAnswer }) {
  const name = toolNameOf(part);
  const ended = isFinal(run?.status);
  const child = subRunOf(part);
  if (child) lastProgress.set(part.toolCallId, child);
  const worked = !child && lastProgress.get(part.toolCallId);
  const asked = part.state === "approval-requested" && !ended;
  useEffect(() => {
    if (asked) approvalShown(part.approval.id);
  }, [asked, part.approval?.id]);
  function decide(approved) {
    decisionMade(run?.agentRunId, part.approval.id, approved, name);
    onDecide(part.approval.id, approved);
  }
  return (
    <div className={`tool${name === "ask_user" ? " ask" : ""}`} data-tool={name} data-state={part.state}>
      <div className="tool-head">
        <strong>{name}</strong> <span className="tool-state">{toolStateInWords(part, run)}</span>
      </div>
      {name === "ask_user" ? (
        <Question
          part={part}
          open={!ended && ready && run?.status === "waiting_for_input"}
          onAnswer={onAnswer}
        />
      ) : (
        part.input !== undefined && <Field label="Arguments" value={part.input} />
      )}
      {part.state === "approval-requested" && !ended && (
        <div className="decide">
          <button
            type="button"
            className="approve"
            disabled={!ready}
            onClick={() => decide(true)}
          >
            Approve
          </button>
          <button
            type="button"
            className="deny"
            disabled={!ready}
            onClick={() => decide(false)}
          >
            Deny
          </button>
        </div>
      )}
      {child && <SubRun progress={child} parentRunId={run?.agentRunId} open={!ended} />}
      {part.state === "output-available" && name !== "ask_user" && !child && (
        <Field label="Result" value={part.output} />
      )}
      {worked && (
        <details className="subrun-work">
          <summary>How {worked.agent} worked</summary>
          <SubRun progress={worked} parentRunId={run?.agentRunId} open={false} />
        </details>
      )}
      {part.state === "output-error" && (
        <div className="field error">
          <div className="label">Error</div>
          {part.errorText}
        </div>
      )}
      {part.state === "output-denied" && (
        <div className="muted">
          {part.approval?.approved
            ? "Not run: the run ended before it could."
            : "Not run: it was not approved."}
        </div>
      )}
    </div>
  );
}

function Question({ part, open, onAnswer }) {
  const [answer, setAnswer] = useState("");
  const waiting = open && part.state === "input-available";
  return (
    <>
      <div className="question">{part.input?.question ?? "The agent asks you something."}</div>
      {part.state === "output-available" && <div className="muted">You answered: {String(part.output)}</div>}
      {waiting && (
        <div className="reply">
          <input
            aria-label="Your answer"
            value={answer}
            onChange={(e) => setAnswer(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && answer.trim()) onAnswer(part.toolCallId, answer.trim());
            }}
            placeholder="Your answer…"
          />
          <button
            type="button"
            disabled={!answer.trim()}
            onClick={() => onAnswer(part.toolCallId, answer.trim())}
          >
            Reply
          </button>
        </div>
      )}
    </>
  );
}

// A sub-agent's run as its caller's stream shows it: its text, its tool calls, and what it waits for.
// Its approvals and questions are answered through the calling run's endpoints; Keel passes each on to
// the run below that waits for it.
function SubRun({ progress, parentRunId, open }) {
  return (
    <div className="subrun" data-agent-run-id={progress.agentRunId} data-status={progress.status}>
      <div className="subrun-head">
        <strong>{progress.agent}</strong> <code>{progress.agentRunId}</code> · {statusInWords(progress.status)}
      </div>
      {progress.parts.map((part, index) => {
        if (part.type === "text") return part.text ? <Text key={`text-${index}`} text={part.text} /> : null;
        if (!part.type?.startsWith("tool-")) return null;
        return (
          <SubRunCall key={part.toolCallId} part={part} child={progress} parentRunId={parentRunId} open={open} />
        );
      })}
    </div>
  );
}

function SubRunCall({ part, child, parentRunId, open }) {
  const name = toolNameOf(part);
  const [sent, setSent] = useState(false);
  const [answer, setAnswer] = useState("");
  const grandchild = subRunOf(part);
  const waitingForApproval = open && !sent && part.state === "approval-requested";
  const asking = open && !sent && name === "ask_user" && part.state === "input-available" && child.status === "waiting_for_input";
  useEffect(() => {
    if (waitingForApproval) approvalShown(part.toolCallId);
  }, [waitingForApproval, part.toolCallId]);
  function decide(approved) {
    decisionMade(parentRunId, part.toolCallId, approved, name);
    send(`approvals/${encodeURIComponent(part.toolCallId)}`, { approved });
  }
  async function send(path, body) {
    setSent(true);
    const response = await fetch(`/api/runs/${encodeURIComponent(parentRunId)}/${path}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) setSent(false);
  }
  return (
    <div className="tool" data-tool={name} data-state={part.state}>
      <div className="tool-head">
        <strong>{name}</strong> <span className="tool-state">{toolStateInWords(part, child)}</span>
      </div>
      {name === "ask_user" ? (
        <div className="question">{part.input?.question}</div>
      ) : (
        part.input !== undefined && <Field label="Arguments" value={part.input} />
      )}
      {waitingForApproval && (
        <div className="decide">
          <button type="button" className="approve" onClick={() => decide(true)}>
            Approve
          </button>
          <button type="button" className="deny" onClick={() => decide(false)}>
            Deny
          </button>
        </div>
      )}
      {asking && (
        <div className="reply">
          <input aria-label="Your answer" value={answer} onChange={(e) => setAnswer(e.target.value)} placeholder="Your answer…" />
          <button type="button" disabled={!answer.trim()} onClick={() => send("answer", { text: answer.trim(), tool_call_id: part.toolCallId })}>
            Reply
          </button>
        </div>
      )}
      {grandchild && <SubRun progress={grandchild} parentRunId={parentRunId} open={open} />}
      {part.state === "output-available" && !grandchild && <Field label="Result" value={part.output} />}
      {part.state === "output-error" && (
        <div className="field error">
          <div className="label">Error</div>
          {part.errorText}
        </div>
      )}
    </div>
  );
}
