// JSON schemas of the OpenAI request bodies kiln serves. Fields kiln does not use are allowed (clients send
// them), but a known field of the wrong type or out of range is a 400, as OpenAI answers it.

const stop = {
  anyOf: [{ type: "string" }, { type: "array", items: { type: "string" }, maxItems: 4 }, { type: "null" }],
};

const sampling = {
  model: { type: "string" },
  max_tokens: { anyOf: [{ type: "integer", minimum: 1 }, { type: "null" }] },
  temperature: { anyOf: [{ type: "number", minimum: 0, maximum: 2 }, { type: "null" }] },
  top_p: { anyOf: [{ type: "number", minimum: 0, maximum: 1 }, { type: "null" }] },
  n: { anyOf: [{ type: "integer", minimum: 1, maximum: 128 }, { type: "null" }] },
  stream: { anyOf: [{ type: "boolean" }, { type: "null" }] },
  stop,
  seed: { anyOf: [{ type: "integer", minimum: 0 }, { type: "null" }] },
  presence_penalty: { anyOf: [{ type: "number", minimum: -2, maximum: 2 }, { type: "null" }] },
  frequency_penalty: { anyOf: [{ type: "number", minimum: -2, maximum: 2 }, { type: "null" }] },
  stream_options: { anyOf: [{ type: "object" }, { type: "null" }] },
  user: { type: "string" },
} as const;

export const completionSchema = {
  type: "object",
  required: ["model", "prompt"],
  properties: {
    ...sampling,
    prompt: {
      anyOf: [
        { type: "string" },
        { type: "array", items: { type: "string" }, minItems: 1 },
        { type: "array", items: { type: "integer", minimum: 0 }, minItems: 1 },
        { type: "array", items: { type: "array", items: { type: "integer", minimum: 0 }, minItems: 1 }, minItems: 1 },
      ],
    },
    logprobs: { anyOf: [{ type: "integer", minimum: 0, maximum: 5 }, { type: "null" }] },
    echo: { anyOf: [{ type: "boolean" }, { type: "null" }] },
  },
} as const;

const content = {
  anyOf: [
    { type: "string" },
    {
      type: "array",
      items: { type: "object", required: ["type"], properties: { type: { type: "string" }, text: { type: "string" } } },
    },
    { type: "null" },
  ],
};

export const chatSchema = {
  type: "object",
  required: ["model", "messages"],
  properties: {
    ...sampling,
    max_completion_tokens: { anyOf: [{ type: "integer", minimum: 1 }, { type: "null" }] },
    messages: {
      type: "array",
      minItems: 1,
      items: { type: "object", required: ["role"], properties: { role: { type: "string" }, content } },
    },
    logprobs: { anyOf: [{ type: "boolean" }, { type: "null" }] },
    top_logprobs: { anyOf: [{ type: "integer", minimum: 0, maximum: 20 }, { type: "null" }] },
  },
} as const;

export interface SamplingFields {
  model: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  n?: number | null;
  stream?: boolean | null;
  stop?: string | string[] | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
}

export interface CompletionBody extends SamplingFields {
  prompt: string | string[] | number[] | number[][];
  logprobs?: number | null;
  echo?: boolean | null;
}

export interface ChatMessageBody {
  role: string;
  content?: string | { type: string; text?: string }[] | null;
}

export interface ChatBody extends SamplingFields {
  max_completion_tokens?: number | null;
  messages: ChatMessageBody[];
  logprobs?: boolean | null;
  top_logprobs?: number | null;
}
