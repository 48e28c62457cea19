// Errors as the OpenAI API writes them: `{ error: { message, type, param, code } }` with an HTTP status.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }

  get body() {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export const badRequest = (message: string, param: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param);
export const unauthorized = () =>
  new ApiError(401, "Incorrect API key provided.", "invalid_request_error", null, "invalid_api_key");
export const notFound = (message: string, param: string | null = null) =>
  new ApiError(404, message, "invalid_request_error", param, "model_not_found");
export const tooLarge = (message: string) =>
  new ApiError(413, message, "invalid_request_error", null, "context_length_exceeded");
export const queueFull = (size: number) =>
  new ApiError(
    429,
    `The server's queue is full (${size} requests waiting); retry later.`,
    "rate_limit_error",
    null,
    "queue_full",
  );
export const unavailable = () =>
  new ApiError(503, "The server is shutting down.", "server_error", null, "shutting_down");
