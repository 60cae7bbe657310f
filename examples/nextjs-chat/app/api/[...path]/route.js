// The browser talks to this app only; this Route Handler forwards /api/* to Keel's gateway, so there is
// no CORS and no change to Keel. It reads KEEL_URL on every request (a rewrite in next.config.mjs would be
// baked in by `next build`), and it passes the gateway's response through as it comes: status, the headers
// the AI SDK and the page read, and the body streamed chunk by chunk, never buffered.

export const runtime = "nodejs";
export const dynamic = "force-dynamic";

// What the gateway needs from the browser's request: the body's type, credentials, where a resumed
// event stream left off, and what the client accepts.
const REQUEST_HEADERS = ["content-type", "authorization", "last-event-id", "accept"];
// What the browser needs from the gateway's answer: the AI SDK checks the stream header, the page reads
// the run id, and the caching headers keep every proxy on the way from holding the stream back.
const RESPONSE_HEADERS = [
  "content-type",
  "x-vercel-ai-ui-message-stream",
  "x-agent-run-id",
  "cache-control",
  "x-accel-buffering",
];
// Statuses whose response has no body by definition (the Response constructor refuses one).
const NO_BODY = new Set([204, 205, 304]);

function gatewayUrl() {
  return (process.env.KEEL_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
}

function pick(headers, names) {
  const picked = new Headers();
  for (const name of names) {
    const value = headers.get(name);
    if (value !== null) picked.set(name, value);
  }
  return picked;
}

async function forward(request, { params }) {
  const { path } = await params;
  const gateway = gatewayUrl();
  const { search } = new URL(request.url);
  const target = `${gateway}/api/${path.map(encodeURIComponent).join("/")}${search}`;
  const hasBody = request.method !== "GET" && request.method !== "HEAD";
  let upstream;
  try {
    upstream = await fetch(target, {
      method: request.method,
      headers: pick(request.headers, REQUEST_HEADERS),
      // Chat bodies are bounded JSON: read whole, they need no streaming upload.
      body: hasBody ? await request.arrayBuffer() : undefined,
      // When the browser goes away, so does the request to the gateway (the run itself goes on).
      signal: request.signal,
      cache: "no-store",
      redirect: "manual",
    });
  } catch (err) {
    if (request.signal.aborted) return new Response(null, { status: 499 });
    const why = err?.cause?.code ?? err?.message ?? String(err);
    return Response.json(
      { detail: `Keel's gateway at ${gateway} did not answer (${why}).` },
      { status: 502 },
    );
  }
  const body = NO_BODY.has(upstream.status) || request.method === "HEAD" ? null : upstream.body;
  return new Response(body, { status: upstream.status, headers: pick(upstream.headers, RESPONSE_HEADERS) });
}

export { forward as GET, forward as POST, forward as PUT, forward as PATCH, forward as DELETE };
