// useChat's own DefaultChatTransport, told two more things: whether a resume (GET /api/chat/{id}/stream)
// found a stream to replay or got 204 (the page needs that to know what to do with the answer it held
// aside on load: see splitStored in keel.js; useChat itself only goes back to "ready" either way), and what
// the person saw of each stream, for Keel's frontend telemetry (telemetry.js).
import { DefaultChatTransport } from "ai";

import { watchStream } from "./telemetry";

export class KeelChatTransport extends DefaultChatTransport {
  constructor({ onResume, ...options }) {
    super(options);
    this.onResume = onResume;
  }

  async sendMessages(options) {
    const sentAt = performance.now();
    const stream = await super.sendMessages(options);
    const named = options.messageId?.startsWith("run-") ? options.messageId : null; // an answer to a run
    return watchStream(stream, { sentAt, runId: named });
  }

  async reconnectToStream(options) {
    const stream = await super.reconnectToStream(options);
    this.onResume?.(stream !== null);
    return stream && watchStream(stream, { resumed: true });
  }
}
