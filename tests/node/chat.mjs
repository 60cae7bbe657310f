// What the Node drivers of the real AI SDK share: useChat's state kept in memory (what @ai-sdk/react does
// with React state), so the SDK's own AbstractChat runs outside a browser, and small waiting helpers.

export const newId = (prefix) => `${prefix}-${Math.random().toString(16).slice(2, 14)}`;

export const userMessage = (text) => ({ id: newId("u"), role: "user", parts: [{ type: "text", text }] });

class MemoryState {
  constructor() {
    this.status = "ready";
    this.error = undefined;
    this.messages = [];
  }
  pushMessage(message) {
    this.messages = [...this.messages, message];
  }
  popMessage() {
    this.messages = this.messages.slice(0, -1);
  }
  replaceMessage(index, message) {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  }
  snapshot(thing) {
    return structuredClone(thing);
  }
}

// The AI SDK's Chat over in-memory state, for one `ai` package (ai5, ai6 or ai7).
export function chatClass(ai) {
  return class Chat extends ai.AbstractChat {
    constructor(options) {
      super({ ...options, state: new MemoryState() });
    }
  };
}

export async function until(predicate, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
