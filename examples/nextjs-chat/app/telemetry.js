// Frontend telemetry for Keel: what the person lived through — time to first token as the browser saw it,
// stalls, reconnects and resumes, errors shown, time from an approval request shown to the decision — sent
// to Keel's POST /api/telemetry through this app's /api proxy, where it becomes keel_frontend_* metrics, a
// JSON log line and part of the run's page in the run viewer. Batched, sent in the background with fetch
// keepalive (it outlives the page); never awaited, and a failure is ignored: telemetry never breaks the chat.
const CLIENT = "nextjs";
const STALL_MS = 2000; // no chunk for longer than this while text is being written is a stall
const BATCH = 50;
const DELAY_MS = 1000;
const DETAIL_CHARS = 500;

const queue = [];
let timer = null;

export function report(runId, kind, valueMs, detail) {
  if (!runId) return;
  const event = { agent_run_id: runId, kind, client: CLIENT };
  if (valueMs != null) event.value_ms = Math.max(0, Math.round(valueMs));
  // By code points, so a cut never leaves half a surrogate pair (the gateway refuses those).
  if (detail) event.detail = Array.from(String(detail)).slice(0, DETAIL_CHARS).join("");
  queue.push(event);
  if (queue.length >= BATCH) flush();
  else timer ??= setTimeout(flush, DELAY_MS);
}

function flush() {
  clearTimeout(timer);
  timer = null;
  while (queue.length) {
    const body = JSON.stringify(queue.splice(0, BATCH));
    try {
      fetch("/api/telemetry", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
        keepalive: true,
      }).catch(() => {});
    } catch {
      // best effort
    }
  }
}

if (typeof window !== "undefined") {
  window.addEventListener("pagehide", flush);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") flush();
  });
}

// A UI message stream, passed through unchanged while it is watched: the first text after a send (TTFT),
// stalls while text is being written, and a resume once the stream names its run.
export function watchStream(stream, { sentAt = null, runId = null, resumed = false } = {}) {
  let lastChunkAt = null;
  let writing = false;
  let resumeToReport = resumed;
  return stream.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        runId = runIdOf(chunk) ?? runId;
        if (resumeToReport && runId) {
          report(runId, "reconnect", null, "resumed after a reload");
          resumeToReport = false;
        }
        const now = performance.now();
        if (writing && lastChunkAt !== null && now - lastChunkAt > STALL_MS) {
          report(runId, "stall", now - lastChunkAt);
        }
        lastChunkAt = now;
        if (chunk.type === "text-start" || chunk.type === "text-delta") writing = true;
        else if (chunk.type === "text-end" || chunk.type === "finish") writing = false;
        if (sentAt !== null && chunk.type === "text-delta" && chunk.delta) {
          report(runId, "ttft", now - sentAt);
          sentAt = null;
        }
        controller.enqueue(chunk);
      },
    }),
  );
}

// Keel's stream names its run in `start` (the assistant message's id) and in `data-run`.
function runIdOf(chunk) {
  if (chunk.type === "start" && chunk.messageId?.startsWith("run-")) return chunk.messageId;
  if (chunk.type === "data-run") return chunk.data?.agentRunId ?? null;
  return null;
}

// Time to a decision: from an approval request first shown on this page to Approve or Deny.
const approvalShownAt = new Map();

export function approvalShown(id) {
  if (!approvalShownAt.has(id)) approvalShownAt.set(id, performance.now());
}

export function decisionMade(runId, id, approved, tool) {
  const shown = approvalShownAt.get(id);
  if (shown === undefined) return;
  approvalShownAt.delete(id);
  report(runId, "decision", performance.now() - shown, `${approved ? "approved" : "denied"} ${tool}`);
}
