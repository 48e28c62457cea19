// Prometheus metrics for kiln serve (prom-client, one registry per server): requests, tokens, queue depth,
// KV blocks in use, time to first token and inter-token latency.

import client from "prom-client";
import type { LLM } from "../runtime/llm.js";

export class ServerMetrics {
  readonly registry = new client.Registry();
  readonly requests = new client.Counter({
    name: "kiln_requests_total",
    help: "HTTP requests by route and status",
    labelNames: ["route", "status"],
    registers: [this.registry],
  });
  readonly promptTokens = new client.Counter({
    name: "kiln_prompt_tokens_total",
    help: "Prompt tokens received",
    registers: [this.registry],
  });
  readonly generationTokens = new client.Counter({
    name: "kiln_generation_tokens_total",
    help: "Tokens generated",
    registers: [this.registry],
  });
  readonly timeToFirstToken = new client.Histogram({
    name: "kiln_time_to_first_token_seconds",
    help: "Time from a request's arrival to its first generated token",
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly interTokenLatency = new client.Histogram({
    name: "kiln_inter_token_latency_seconds",
    help: "Time between consecutive generated tokens of a sequence",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });

  constructor(llm: LLM) {
    const gauge = (name: string, help: string, read: () => number) =>
      new client.Gauge({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.set(read());
        },
      });
    gauge("kiln_queue_depth", "Requests waiting to be scheduled", () => llm.numWaiting);
    gauge("kiln_running_requests", "Requests generating", () => llm.numRunning);
    gauge("kiln_kv_blocks_in_use", "KV cache blocks held by requests", () => llm.numKvBlocks - llm.numFreeKvBlocks);
    gauge("kiln_kv_blocks_total", "KV cache blocks in the pool", () => llm.numKvBlocks);
  }
}
