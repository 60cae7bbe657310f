"use client";

// A minimal chat on Keel with the AI SDK's own useChat: streaming text, tool calls, approvals
// (addToolApprovalResponse + sendAutomaticallyWhen), the agent's questions (addToolOutput), cancel, and
// resume after a reload (resume: true). Keel's gateway needs no changes for any of it.
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, lastAssistantMessageIsCompleteWithApprovalResponses } from "ai";
import { useEffect, useMemo, useRef, useState } from "react";

const STORE = "keel-nextjs-chat";

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

// Resubmit once the agent's question (Keel's `ask_user` tool) has its answer in the last step.
function questionAnswered({ messages }) {
  const last = messages.at(-1);
  if (last?.role !== "assistant") return false;
  const step = last.parts.slice(last.parts.findLastIndex((p) => p.type === "step-start") + 1);
  const tools = step.filter((p) => p.type.startsWith("tool-"));
  return (
    tools.some((p) => p.type === "tool-ask_user" && p.state === "output-available") &&
    tools.every((p) => p.state.startsWith("output-") || p.state === "approval-responded")
  );
}

function Chat({ saved, onNewChat }) {
  const [purpose, setPurpose] = useState(saved.purpose ?? "assistant");
  const purposeRef = useRef(purpose);
  purposeRef.current = purpose;
  const transport = useMemo(
    // `purpose` is Keel's own field of the POST /api/chat body; useChat sends the rest.
    () => new DefaultChatTransport({ api: "/api/chat", body: () => ({ purpose: purposeRef.current }) }),
    [],
  );
  const { messages, sendMessage, addToolApprovalResponse, addToolOutput, status, stop, error } = useChat({
    id: saved.id,
    messages: saved.messages,
    transport,
    resume: true, // GET /api/chat/{id}/stream on mount: a reload mid-run picks the stream up again
    sendAutomaticallyWhen: (options) =>
      lastAssistantMessageIsCompleteWithApprovalResponses(options) || questionAnswered(options),
  });
  useEffect(() => {
    sessionStorage.setItem(STORE, JSON.stringify({ id: saved.id, purpose, messages }));
  }, [saved.id, purpose, messages]);

  const [input, setInput] = useState("");
  const busy = status === "submitted" || status === "streaming";
  const last = messages.at(-1);
  const lastRun = last?.role === "assistant" ? runOf(last) : null;
  const active = lastRun && !FINAL.has(lastRun.status);

  async function cancel() {
    // The assistant message's id is the run's id. stop() only drops this connection; the run goes on
    // until it is cancelled on the server.
    await fetch(`/api/runs/${encodeURIComponent(last.id)}/cancel`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ reason: "cancelled from the Next.js example" }),
    });
    if (!busy) return;
    stop();
  }

  return (
    <main>
      <header>
        <h1>Keel · useChat</h1>
        <select value={purpose} onChange={(e) => setPurpose(e.target.value)}>
          <option value="assistant">assistant</option>
          <option value="learnpack-lesson-writer">learnpack-lesson-writer</option>
        </select>
        <button type="button" onClick={onNewChat} disabled={busy}>
          New chat
        </button>
      </header>

      {messages.map((message) => (
        <div key={message.id} className={`msg ${message.role}`}>
          <div className="bubble">
            {message.parts.map((part, i) => (
              <Part
                key={part.toolCallId ?? `${part.type}-${i}`}
                part={part}
                run={runOf(message)}
                ready={!busy}
                onApprove={(approved) => addToolApprovalResponse({ id: part.approval.id, approved })}
                onAnswer={(text) => addToolOutput({ tool: "ask_user", toolCallId: part.toolCallId, output: text })}
              />
            ))}
          </div>
          {message.role === "assistant" && runOf(message) && (
            <div className="status">
              {message.id} · {runOf(message).status}
              {runOf(message).detail ? ` — ${runOf(message).detail}` : ""}
            </div>
          )}
        </div>
      ))}
      {error && <p className="error">{error.message}</p>}

      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!input.trim() || busy) return;
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input value={input} onChange={(e) => setInput(e.target.value)} placeholder="Message Keel…" />
        {active && (
          <button type="button" className="deny" onClick={cancel}>
            Cancel run
          </button>
        )}
        <button type="submit" disabled={busy}>
          Send
        </button>
      </form>
    </main>
  );
}

const FINAL = new Set(["completed", "failed", "cancelled", "step_limit", "budget_exceeded", "needs_input"]);

// Keel's `data-run` part: the run's id and status, replaced in place as it changes.
function runOf(message) {
  return message.parts.findLast((p) => p.type === "data-run")?.data ?? null;
}

function Part({ part, run, ready, onApprove, onAnswer }) {
  const [answer, setAnswer] = useState("");
  if (part.type === "text") return <div className="text">{part.text}</div>; // React escapes it
  if (!part.type.startsWith("tool-")) return null; // step-start, data-run, ...
  const name = part.type.slice("tool-".length);

  if (name === "ask_user") {
    const waiting = part.state === "input-available" && run?.status === "waiting_for_input";
    return (
      <div className="tool ask">
        <strong>{part.input?.question ?? "The agent asks"}</strong>
        {part.state === "output-available" && <div>You answered: {String(part.output)}</div>}
        {waiting && ready && (
          <form
            onSubmit={(e) => {
              e.preventDefault();
              if (answer.trim()) onAnswer(answer.trim());
            }}
          >
            <input value={answer} onChange={(e) => setAnswer(e.target.value)} placeholder="Your answer…" />
            <button type="submit">Reply</button>
          </form>
        )}
      </div>
    );
  }

  return (
    <div className="tool">
      <strong>{name}</strong> <span className="status">{part.state}</span>
      <pre>{JSON.stringify(part.input, null, 2)}</pre>
      {part.state === "approval-requested" && (
        <div>
          <button type="button" className="approve" disabled={!ready} onClick={() => onApprove(true)}>
            Approve
          </button>{" "}
          <button type="button" className="deny" disabled={!ready} onClick={() => onApprove(false)}>
            Deny
          </button>
        </div>
      )}
      {part.state === "output-available" && <pre>{JSON.stringify(part.output, null, 2)}</pre>}
      {part.state === "output-error" && <pre className="error">{part.errorText}</pre>}
      {part.state === "output-denied" && <div className="error">Denied: the tool did not run.</div>}
    </div>
  );
}
