// A Hugging Face model directory's weights: one or more safetensors files, optionally sharded with
// model.safetensors.index.json, read one tensor at a time.

import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointError } from "../errors.js";
import { SafetensorsFile, type TensorInfo } from "./safetensors.js";

export const INDEX_FILE = "model.safetensors.index.json";

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const q = JSON.stringify;

/** The tensors of a Hugging Face model directory: one or more safetensors files, optionally indexed. */
export class TensorStore {
  readonly dir: string;
  readonly #files: SafetensorsFile[];
  readonly #byName: Map<string, SafetensorsFile>;

  private constructor(dir: string, files: SafetensorsFile[], byName: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.#files = files;
    this.#byName = byName;
  }

  static open(dir: string): TensorStore {
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch (e) {
      throw new CheckpointError(`${dir}: cannot list model directory (${(e as Error).message})`);
    }
    const indexPath = path.join(dir, INDEX_FILE);
    const weightMap = entries.includes(INDEX_FILE) ? readWeightMap(indexPath) : undefined;
    const fileNames = weightMap
      ? [...new Set(weightMap.values())]
      : entries.filter((f) => f.endsWith(".safetensors")).sort();
    if (fileNames.length === 0) throw new CheckpointError(`${dir}: no *.safetensors files in the model directory`);
    for (const f of fileNames) {
      if (!fs.existsSync(path.join(dir, f))) {
        throw new CheckpointError(`${indexPath}: names shard ${q(f)}, which does not exist in ${dir}`);
      }
    }
    const files: SafetensorsFile[] = [];
    try {
      const byName = new Map<string, SafetensorsFile>();
      for (const f of fileNames) {
        const file = SafetensorsFile.open(path.join(dir, f));
        files.push(file);
        for (const name of file.names()) {
          const other = byName.get(name);
          if (other) throw new CheckpointError(`tensor ${q(name)} is in both ${other.path} and ${file.path}`);
          byName.set(name, file);
        }
      }
      for (const [name, f] of weightMap ?? []) {
        if (byName.get(name)?.path !== path.join(dir, f)) {
          throw new CheckpointError(`${indexPath}: maps tensor ${q(name)} to ${q(f)}, which does not contain it`);
        }
      }
      return new TensorStore(dir, files, byName);
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
  }

  /** Names in file order, then header order within each file. */
  names(): string[] {
    return [...this.#byName.keys()];
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** The path of the file holding `name`. */
  fileOf(name: string): string {
    return this.#file(name).path;
  }

  info(name: string): TensorInfo {
    return this.#file(name).info(name);
  }

  readBytes(name: string): Uint8Array {
    return this.#file(name).readBytes(name);
  }

  readFloat32(name: string): Float32Array {
    return this.#file(name).readFloat32(name);
  }

  readRows(name: string, start: number, end: number): Uint8Array {
    return this.#file(name).readRows(name, start, end);
  }

  close(): void {
    for (const f of this.#files) f.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #file(name: string): SafetensorsFile {
    const file = this.#byName.get(name);
    if (!file) {
      throw new CheckpointError(`${this.dir}: no tensor ${q(name)} in any of ${this.#files.length} safetensors files`);
    }
    return file;
  }
}

function readWeightMap(indexPath: string): Map<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexPath, "utf8"));
  } catch (e) {
    throw new CheckpointError(`${indexPath}: cannot read shard index (${(e as Error).message})`);
  }
  const weightMap = isRecord(index) ? index.weight_map : undefined;
  if (!isRecord(weightMap)) throw new CheckpointError(`${indexPath}: expected an object "weight_map" {tensor: file}`);
  const map = new Map<string, string>();
  for (const [name, f] of Object.entries(weightMap)) {
    // Shards must sit beside the index; a path would let the index reach outside the model directory.
    if (typeof f !== "string" || f === "" || path.basename(f) !== f) {
      throw new CheckpointError(
        `${indexPath}: tensor ${q(name)} maps to ${q(f)}, expected a file name in ${path.dirname(indexPath)}`,
      );
    }
    map.set(name, f);
  }
  return map;
}
