// Typed errors: every message names the file, tensor, flag or limit at fault and what was expected.
// The CLI prints `kiln: <message>` for these and exits non-zero, never a stack trace.

export class KilnError extends Error {
  override name = "KilnError";
}

/** Bad command-line usage: an unknown, missing or malformed flag. */
export class UsageError extends KilnError {
  override name = "UsageError";
}

/** A config file (HF config.json, checkpoint or engine config) is missing, malformed or unsupported. */
export class ConfigError extends KilnError {
  override name = "ConfigError";
}

/** A weights file is unreadable, malformed, or lacks a tensor the model needs. */
export class CheckpointError extends KilnError {
  override name = "CheckpointError";
}

/** A request or build setting exceeds an engine limit (max_seq_len, max_batch_size, …). */
export class LimitError extends KilnError {
  override name = "LimitError";
}

/** An engine file is malformed or was built for another version, backend or target. */
export class EngineError extends KilnError {
  override name = "EngineError";
}

/** An output path cannot be written safely. */
export class OutputError extends KilnError {
  override name = "OutputError";
}
