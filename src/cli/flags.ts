// Flag parsers shared by the commands: each failure names the flag and what it expected.

import { InvalidArgumentError } from "commander";

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n <= 0) {
    throw new InvalidArgumentError(`expected a positive integer, got "${value}"`);
  }
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`expected a non-negative integer, got "${value}"`);
  }
  return n;
}

export function oneOf<T extends string>(choices: readonly T[]): (value: string) => T {
  return (value) => {
    if (!choices.includes(value as T))
      throw new InvalidArgumentError(`expected one of ${choices.join(", ")}, got "${value}"`);
    return value as T;
  };
}

function number(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got "${value}"`);
  return n;
}

export function nonNegativeNumber(value: string): number {
  const n = number(value);
  if (n < 0) throw new InvalidArgumentError(`expected a number ≥ 0, got "${value}"`);
  return n;
}

export function positiveNumber(value: string): number {
  const n = number(value);
  if (n <= 0) throw new InvalidArgumentError(`expected a number > 0, got "${value}"`);
  return n;
}

export function unitInterval(value: string): number {
  const n = number(value);
  if (n < 0 || n > 1) throw new InvalidArgumentError(`expected a number in [0, 1], got "${value}"`);
  return n;
}

export function finiteNumber(value: string): number {
  return number(value);
}

/** trtllm-build's enable/disable switches. */
export function enableDisable(value: string): boolean {
  if (value === "enable") return true;
  if (value === "disable") return false;
  throw new InvalidArgumentError(`expected enable or disable, got "${value}"`);
}
