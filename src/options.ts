/**
 * One way to read and check options objects, for every public entry point
 * (joinGroup, joinSlots, joinConsumerGroup, openStore and the backends, the
 * sidecar). A mistake is reported when the application starts, by the
 * option's name, with what to do — not later in a background loop, and never
 * by silently using a default:
 *
 *  - an option nobody reads (a misspelling such as `sesionTtlMs`) is refused,
 *    with the closest known name;
 *  - a value of the wrong type or out of range is refused with its range;
 *  - a string where a list is expected is refused (a string is iterable: it
 *    would otherwise be read as a list of characters).
 *
 * Usage: `const r = new OptionReader(options, 'joinGroup options')`, then one
 * `r.xxx(name, …)` per option, then `r.done()`, which refuses every key that
 * was not read.
 */
import { InvalidArgumentError } from './errors.js';

const DAY_MS = 86_400_000;

export class OptionReader {
  readonly #o: Readonly<Record<string, unknown>>;
  readonly #where: string;
  readonly #read = new Set<string>();

  /** `where` names the object in messages, e.g. `joinGroup options` or `options.node`. */
  constructor(options: unknown, where: string) {
    if (options === null || typeof options !== 'object' || Array.isArray(options)) {
      throw new InvalidArgumentError(`${where} must be an object, got ${typeName(options)}`);
    }
    this.#o = options as Record<string, unknown>;
    this.#where = where;
  }

  /** Refuse an option under its former name, saying what it is called now (0.x renames). */
  renamed(former: string, now: string): void {
    if (this.#o[former] !== undefined) {
      throw new InvalidArgumentError(
        `${this.#where}: the option ${JSON.stringify(former)} is now called ${JSON.stringify(now)}`,
      );
    }
  }

  /** The raw value (marks the key as known). */
  raw(name: string): unknown {
    this.#read.add(name);
    return this.#o[name];
  }

  has(name: string): boolean {
    return this.#o[name] !== undefined;
  }

  #name(name: string): string {
    return `${this.#where}.${name}`;
  }

  /** A required value that passes `check` (which returns an error message, or undefined when fine). */
  required<T>(name: string, check: (v: unknown) => string | undefined): T {
    const v = this.raw(name);
    if (v === undefined) throw new InvalidArgumentError(`${this.#name(name)} is required`);
    const problem = check(v);
    if (problem !== undefined) throw new InvalidArgumentError(`${this.#name(name)} ${problem}`);
    return v as T;
  }

  /** An optional value that passes `check` (which returns an error message, or undefined when fine). */
  optional<T>(name: string, check: (v: unknown) => string | undefined): T | undefined {
    const v = this.raw(name);
    if (v === undefined) return undefined;
    const problem = check(v);
    if (problem !== undefined) throw new InvalidArgumentError(`${this.#name(name)} ${problem}`);
    return v as T;
  }

  /** Milliseconds: a finite number in [min, max] (default range 0 .. one day). */
  ms(name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    return this.number(name, fallback, { min: range.min ?? 0, max: range.max ?? DAY_MS, unit: 'milliseconds' });
  }

  /** An optional finite number in [min, max]. */
  number(name: string, fallback: number, range: { min?: number; max?: number; unit?: string } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const min = range.min ?? Number.NEGATIVE_INFINITY;
    const max = range.max ?? Number.POSITIVE_INFINITY;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
      throw new InvalidArgumentError(
        `${this.#name(name)} must be a number${range.unit === undefined ? '' : ` of ${range.unit}`}` +
          `${rangeText(min, max)}, got ${show(v)}`,
      );
    }
    return v;
  }

  /** An optional whole number in [min, max]. */
  integer(name: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    const min = range.min ?? Number.MIN_SAFE_INTEGER;
    const max = range.max ?? Number.MAX_SAFE_INTEGER;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      throw new InvalidArgumentError(
        `${this.#name(name)} must be a whole number${rangeText(min, max)}, got ${show(v)}`,
      );
    }
    return v;
  }

  /** An optional string of at most `maxLength` characters. */
  string(name: string, fallback: string, maxLength?: number): string;
  string(name: string, fallback: undefined, maxLength?: number): string | undefined;
  string(name: string, fallback: string | undefined, maxLength = 1024): string | undefined {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (typeof v !== 'string') throw new InvalidArgumentError(`${this.#name(name)} must be a string, got ${show(v)}`);
    if (v.length > maxLength) {
      throw new InvalidArgumentError(`${this.#name(name)} is ${v.length} characters long; the limit is ${maxLength}`);
    }
    return v;
  }

  boolean(name: string, fallback: boolean): boolean {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean')
      throw new InvalidArgumentError(`${this.#name(name)} must be true or false, got ${show(v)}`);
    return v;
  }

  /** One of `choices`. */
  oneOf<T extends string>(name: string, choices: readonly T[], fallback: T): T {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    if (typeof v !== 'string' || !(choices as readonly string[]).includes(v)) {
      throw new InvalidArgumentError(
        `${this.#name(name)} must be one of ${choices.map((c) => JSON.stringify(c)).join(', ')}, got ${show(v)}` +
          suggestion(typeof v === 'string' ? v : '', choices),
      );
    }
    return v as T;
  }

  /** A function (required unless a fallback is given). */
  fn<F extends (...args: never[]) => unknown>(name: string, fallback?: F): F {
    const v = this.raw(name);
    if (v === undefined && fallback !== undefined) return fallback;
    if (typeof v !== 'function')
      throw new InvalidArgumentError(`${this.#name(name)} must be a function, got ${show(v)}`);
    return v as F;
  }

  /** A nested options object, read with its own reader (undefined when absent and not required). */
  object(name: string, required: true): OptionReader;
  object(name: string, required?: false): OptionReader | undefined;
  object(name: string, required = false): OptionReader | undefined {
    const v = this.raw(name);
    if (v === undefined && !required) return undefined;
    return new OptionReader(v, this.#name(name));
  }

  /** A list of strings; a single string is refused (it is iterable, and would be read as its characters). */
  stringList(name: string, fallback: readonly string[]): readonly string[] {
    const v = this.raw(name);
    if (v === undefined) return fallback;
    return stringList(v, this.#name(name));
  }

  /** Refuse every key that no call read: a misspelt option must not silently fall back to its default. */
  done(): void {
    for (const key of Object.keys(this.#o)) {
      if (this.#read.has(key)) continue;
      // An explicit `undefined` is how TypeScript users pass "not set" through: harmless.
      if (this.#o[key] === undefined) continue;
      throw new InvalidArgumentError(
        `${this.#where} has an unknown option ${JSON.stringify(key)}${suggestion(key, [...this.#read])}; ` +
          `known options: ${[...this.#read].sort().join(', ')}`,
      );
    }
  }
}

/**
 * A list of strings from any iterable except a string (which would be read as its characters: `add("queue-1")`
 * would register "q", "u", "e", …). `where` names the argument in the message.
 */
export function stringList(value: unknown, where: string): string[] {
  if (typeof value === 'string') {
    throw new InvalidArgumentError(
      `${where} must be a list of names, got the single string ${show(value)}; wrap it in an array: [${show(value)}]`,
    );
  }
  if (
    value === null ||
    typeof value !== 'object' ||
    typeof (value as Iterable<unknown>)[Symbol.iterator] !== 'function'
  ) {
    throw new InvalidArgumentError(
      `${where} must be a list (an array or another iterable) of strings, got ${show(value)}`,
    );
  }
  const out: string[] = [];
  for (const item of value as Iterable<unknown>) {
    if (typeof item !== 'string') {
      throw new InvalidArgumentError(`${where} must hold strings only; item ${out.length} is ${show(item)}`);
    }
    out.push(item);
  }
  return out;
}

function rangeText(min: number, max: number): string {
  if (Number.isFinite(min) && Number.isFinite(max) && min > Number.MIN_SAFE_INTEGER && max < Number.MAX_SAFE_INTEGER)
    return ` from ${min} to ${max}`;
  if (Number.isFinite(min) && min > Number.MIN_SAFE_INTEGER) return ` of at least ${min}`;
  if (Number.isFinite(max) && max < Number.MAX_SAFE_INTEGER) return ` of at most ${max}`;
  return '';
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

/**
 * The options object of one call (a command, a query, an add): refuse anything but an object, and keys not in
 * `known` — a misspelt `timeoutMS` would otherwise be ignored and the default used. No allocation when the object
 * is fine: this runs on every command.
 */
export function checkCallOptions(options: unknown, known: readonly string[], where: string): void {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`${where} must be an object, got ${show(options)}`);
  }
  for (const key in options) {
    if (!known.includes(key)) {
      throw new InvalidArgumentError(
        `${where} has an unknown option ${JSON.stringify(key)}${suggestion(key, known)}; known options: ` +
          known.join(', '),
      );
    }
  }
}

/** A value as an error message shows it: strings quoted (so "3" is not taken for 3), objects by their kind. */
export function show(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === undefined || v === null) return String(v);
  if (typeof v === 'function') return 'a function';
  if (Array.isArray(v)) return 'an array';
  return typeof v;
}

/** `(did you mean "x"?)` for the closest candidate within a small edit distance, else nothing. */
export function suggestion(word: string, candidates: readonly string[]): string {
  let best: string | undefined;
  let bestD = Number.POSITIVE_INFINITY;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(word.length / 4)) ? ` (did you mean "${best}"?)` : '';
}

function editDistance(a: string, b: string): number {
  if (a.length > 64 || b.length > 64) return Number.POSITIVE_INFINITY;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}
