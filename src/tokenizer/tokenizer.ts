// Text ↔ token ids for a model dir (HF tokenizer.json + tokenizer_config.json), its special ids and chat template,
// and a streaming decoder that never splits a UTF-8 character across deltas.

import fs from "node:fs";
import path from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import { readJson } from "../checkpoint/convert-hf.js";
import { ConfigError } from "../errors.js";

export interface ChatMessage {
  role: string;
  content: string;
}

type Json = Record<string, unknown>;

/** Optional files read as {} when absent; present but malformed is still a ConfigError. */
function readOptional(file: string): Json {
  return fs.existsSync(file) ? (readJson(file) as Json) : {};
}

/** tokenizer_config.json writes special tokens as a string or as an AddedToken object {content, …}. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  const content = v !== null && typeof v === "object" ? (v as Json).content : undefined;
  return typeof content === "string" ? content : undefined;
}

/** HF configs give `eos_token_id` as one id or a list (generation stops on any; the first is the canonical one). */
function firstId(v: unknown): number | undefined {
  const id = Array.isArray(v) ? v[0] : v;
  return Number.isInteger(id) ? (id as number) : undefined;
}

export class TextTokenizer {
  readonly eosId: number | null;
  readonly padId: number | null;
  readonly chatTemplate: string | null;
  private readonly config: Json;
  private template: Template | null = null;

  private constructor(
    readonly dir: string,
    private readonly tok: Tokenizer,
    config: Json,
    modelConfigs: Json[],
    chatTemplateFile: string | null,
  ) {
    this.config = config;
    // generation_config.json is what HF generate() stops on, so it outranks config.json and the tokenizer's own token.
    const lookup = (idKey: string, tokenKey: string): number | null => {
      for (const c of modelConfigs) {
        const id = firstId(c[idKey]);
        if (id !== undefined) return id;
      }
      const text = tokenText(config[tokenKey]);
      return (text !== undefined ? tok.token_to_id(text) : undefined) ?? null;
    };
    this.eosId = lookup("eos_token_id", "eos_token");
    this.padId = lookup("pad_token_id", "pad_token") ?? this.eosId;
    const ct = config.chat_template;
    const named = Array.isArray(ct) ? ct.find((t: Json) => t?.name === "default")?.template : ct;
    // Newer transformers save the template beside the config instead of inside it.
    this.chatTemplate = typeof named === "string" ? named : chatTemplateFile;
  }

  static load(dir: string): TextTokenizer {
    const file = path.join(dir, "tokenizer.json");
    if (!fs.existsSync(file)) throw new ConfigError(`${file}: not found; expected a Hugging Face tokenizer.json`);
    const json = readJson(file);
    if (json === null || typeof json !== "object" || !("model" in json)) {
      throw new ConfigError(`${file}: expected a Hugging Face tokenizer.json object with a "model" key`);
    }
    const config = readOptional(path.join(dir, "tokenizer_config.json"));
    // The library cleans up spaces before punctuation unless told otherwise; transformers ≥ 4.45 and the Rust
    // tokenizers do not, and cleaning breaks the round trip and makes streamed deltas disagree with a full decode.
    const libConfig = { ...config, clean_up_tokenization_spaces: config.clean_up_tokenization_spaces ?? false };
    const jinja = path.join(dir, "chat_template.jinja");
    return new TextTokenizer(
      dir,
      new Tokenizer(json, libConfig),
      config,
      [readOptional(path.join(dir, "generation_config.json")), readOptional(path.join(dir, "config.json"))],
      fs.existsSync(jinja) ? fs.readFileSync(jinja, "utf8") : null,
    );
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    // The library throws on an empty list; no ids is simply no text.
    if (ids.length === 0) return "";
    return this.tok.decode([...ids], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  applyChatTemplate(messages: ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    if (this.chatTemplate === null) {
      throw new ConfigError(`${path.join(this.dir, "tokenizer_config.json")}: expected a "chat_template"; none found`);
    }
    this.template ??= new Template(this.chatTemplate);
    const c = this.config;
    return this.template.render({
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: tokenText(c.bos_token) ?? "",
      eos_token: tokenText(c.eos_token) ?? "",
      pad_token: tokenText(c.pad_token) ?? "",
      unk_token: tokenText(c.unk_token) ?? "",
    });
  }
}

/**
 * Decodes a growing list of ids as text deltas. Byte-level tokens can end mid-character, so each step decodes a
 * short window (from the last complete boundary) and holds the delta back while it ends in U+FFFD. Decoding the
 * window with its preceding text, rather than the new ids alone, keeps decoders that strip a leading space honest.
 */
export class StreamDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0; // start of the window: text before it is emitted and final
  private readOffset = 0; // end of the emitted part of the window

  constructor(
    private readonly tok: TextTokenizer,
    private readonly opts: { skipSpecialTokens?: boolean } = {},
  ) {}

  push(id: number): string {
    this.ids.push(id);
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.opts);
    const text = this.tok.decode(this.ids.slice(this.prefixOffset), this.opts);
    if (text.length <= prefix.length || text.endsWith("\uFFFD")) return "";
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return text.slice(prefix.length);
  }

  /** Whatever is held back, even an incomplete sequence: the stream has ended. */
  flush(): string {
    const prefix = this.tok.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.opts);
    const text = this.tok.decode(this.ids.slice(this.prefixOffset), this.opts);
    this.prefixOffset = this.readOffset = this.ids.length;
    return text.slice(prefix.length);
  }
}
