// Drives one LLM for a server: steps it whenever requests are waiting or running, giving the event loop a
// turn between steps so that new requests, streamed chunks and disconnects are handled as they come.

import type { LLM } from "../runtime/llm.js";

export class EngineLoop {
  private scheduled = false;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly llm: LLM) {}

  /** Makes sure a step is coming; call after submitting or aborting. */
  kick(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.tick());
  }

  private tick(): void {
    this.scheduled = false;
    if (!this.llm.hasWork) {
      for (const w of this.idleWaiters.splice(0)) w();
      return;
    }
    this.llm.step();
    this.kick();
  }

  /** Resolves once no request is waiting or running. */
  idle(): Promise<void> {
    if (!this.llm.hasWork) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
