// useChat's own DefaultChatTransport, told one more thing: whether a resume (GET /api/chat/{id}/stream)
// found a stream to replay or got 204. The page needs that to know what to do with the answer it held
// aside on load (see splitStored in keel.js); useChat itself only goes back to "ready" either way.
import { DefaultChatTransport } from "ai";

export class KeelChatTransport extends DefaultChatTransport {
  constructor({ onResume, ...options }) {
    super(options);
    this.onResume = onResume;
  }

  async reconnectToStream(options) {
    const stream = await super.reconnectToStream(options);
    this.onResume?.(stream !== null);
    return stream;
  }
}
