/**
 * Ready-made sequential specifications for the linearizability checker (src/sim/linearizability.ts): a key-value
 * map partitioned per key, and a single register.
 */
import { UNKNOWN, type Model, type Operation, type StepResult, type Unknown } from './linearizability.js';

/**
 * Key-value map operations. Outputs: `get` → the value, or null when the key is absent; `cas` → whether it swapped
 * (`expected: null` means "only if absent"); `put`, `append` and `delete` → ignored (give null).
 */
export type KvInput =
  | { readonly op: 'get'; readonly key: string }
  | { readonly op: 'put'; readonly key: string; readonly value: string }
  | { readonly op: 'append'; readonly key: string; readonly value: string }
  | { readonly op: 'cas'; readonly key: string; readonly expected: string | null; readonly value: string }
  | { readonly op: 'delete'; readonly key: string };
export type KvOutput = string | boolean | null;
export type KvOperation = Operation<KvInput, KvOutput>;

const REJECT = { ok: false } as const;

/** FNV-1a over a string's UTF-16 code units. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * A key-value map of strings. The history is split per key (a map is linearizable iff each key is), so the state
 * the search sees is the one key's value (null: absent).
 */
export function kvModel(): Model<string | null, KvInput, KvOutput> {
  return {
    init: () => null,
    step(state, input, output): StepResult<string | null> {
      switch (input.op) {
        case 'get':
          if (output === UNKNOWN || output === state) return { ok: true, state };
          return REJECT;
        case 'put':
          return { ok: true, state: input.value };
        case 'append':
          return { ok: true, state: (state ?? '') + input.value };
        case 'delete':
          return { ok: true, state: null };
        case 'cas': {
          const swaps = state === input.expected;
          if (output !== UNKNOWN && output !== swaps) return REJECT;
          return { ok: true, state: swaps ? input.value : state };
        }
      }
    },
    partition(ops) {
      const byKey = new Map<string, KvOperation[]>();
      for (const op of ops) {
        let list = byKey.get(op.input.key);
        if (list === undefined) byKey.set(op.input.key, (list = []));
        list.push(op);
      }
      return [...byKey.values()];
    },
    simplify: simplifyKv,
    equal: (a, b) => a === b,
    hash: (s) => (s === null ? 0 : hashString(s) | 1),
    describeOperation: (input, output) => describeKv(input, output),
    describeState: (s) => (s === null ? '(absent)' : JSON.stringify(s)),
    describePartition: (ops) => (ops[0] === undefined ? 'no key' : `key ${JSON.stringify(ops[0].input.key)}`),
  };
}

/**
 * Simplify one key's history before the search, soundly, so that operations of unknown outcome cost less:
 *
 *  1. an unknown read is dropped (it constrains nothing);
 *  2. an unknown put whose value is written by no other operation, on a key with no appends, and which some read
 *     returned (or some cas that succeeded expected), certainly took effect, and before the earliest return of
 *     those: it becomes an operation that returned then (its output is not used). Only it can have produced that
 *     value, and a read's point lies before its return;
 *  3. an unknown put or append whose value nobody observed — no read returned a value containing it, no cas expected
 *     a value containing it — is dropped unless a cas that is known to have failed could tell: one that returned
 *     after the write was called and expected null or a value some operation writes (with appends on the key: any
 *     failed cas; without, a cas expecting a value nobody writes fails whatever happened). In any linearization with
 *     the write, the state it leaves is overwritten before any operation that could tell (a read would observe it;
 *     a cas that succeeded would expect it; one that failed could not tell), so leaving it out (it never happened)
 *     is a linearization too.
 *
 * What the search shows in a failure message is the partition after this (rule 2 gives a return time).
 */
function simplifyKv(ops: readonly KvOperation[]): readonly KvOperation[] {
  if (ops.every((o) => o.returnTime !== undefined)) return ops;
  const seen: string[] = [];
  let appends = false;
  const writers = new Map<string, number>();
  const observedBy = new Map<string, number>();
  const observe = (value: string, at: number): void => {
    const before = observedBy.get(value);
    if (before === undefined || at < before) observedBy.set(value, at);
  };
  for (const o of ops) {
    const i = o.input;
    if (i.op === 'get' && o.returnTime !== undefined && typeof o.output === 'string') {
      seen.push(o.output);
      observe(o.output, o.returnTime);
    }
    if (i.op === 'cas') {
      if (i.expected !== null) seen.push(i.expected);
      if (o.returnTime !== undefined && o.output === true && i.expected !== null) observe(i.expected, o.returnTime);
    }
    if (i.op === 'append') appends = true;
    if (i.op === 'put' || i.op === 'cas' || i.op === 'append') writers.set(i.value, (writers.get(i.value) ?? 0) + 1);
  }
  // The last return of a failed cas that could tell whether an unobserved write happened.
  let lastTellingCas = Number.NEGATIVE_INFINITY;
  for (const o of ops) {
    const i = o.input;
    if (i.op !== 'cas' || o.returnTime === undefined || o.output !== false) continue;
    if (appends || i.expected === null || writers.has(i.expected))
      lastTellingCas = Math.max(lastTellingCas, o.returnTime);
  }
  const out: KvOperation[] = [];
  for (const o of ops) {
    if (o.returnTime !== undefined) {
      out.push(o);
      continue;
    }
    const i = o.input;
    if (i.op === 'get') continue;
    if (i.op === 'put' && !appends && writers.get(i.value) === 1) {
      const by = observedBy.get(i.value);
      if (by !== undefined && by >= o.callTime) {
        out.push({ ...o, returnTime: by, output: null });
        continue;
      }
    }
    if (
      (i.op === 'put' || i.op === 'append') &&
      lastTellingCas < o.callTime &&
      i.value !== '' &&
      !seen.some((v) => v.includes(i.value))
    ) {
      continue;
    }
    out.push(o);
  }
  return out;
}

function describeKv(input: KvInput, output: KvOutput | Unknown): string {
  const out = output === UNKNOWN ? '?' : JSON.stringify(output);
  const k = JSON.stringify(input.key);
  switch (input.op) {
    case 'get':
      return `get(${k}) → ${output === null ? '(absent)' : out}`;
    case 'put':
      return `put(${k}, ${JSON.stringify(input.value)})`;
    case 'append':
      return `append(${k}, ${JSON.stringify(input.value)})`;
    case 'delete':
      return `delete(${k})`;
    case 'cas':
      return `cas(${k}, ${input.expected === null ? '(absent)' : JSON.stringify(input.expected)} → ${JSON.stringify(input.value)}) → ${out}`;
  }
}

/** Single-register operations. Outputs: `read` → the value; `cas` → whether it swapped; `write` → ignored. */
export type RegisterInput<T> =
  | { readonly op: 'read' }
  | { readonly op: 'write'; readonly value: T }
  | { readonly op: 'cas'; readonly expected: T; readonly value: T };
export type RegisterOutput<T> = T | boolean;

/** One register holding values compared with `Object.is` (numbers, strings, null…), starting at `initial`. */
export function registerModel<T>(initial: T): Model<T, RegisterInput<T>, RegisterOutput<T>> {
  return {
    init: () => initial,
    step(state, input, output): StepResult<T> {
      switch (input.op) {
        case 'read':
          return output === UNKNOWN || Object.is(output, state) ? { ok: true, state } : REJECT;
        case 'write':
          return { ok: true, state: input.value };
        case 'cas': {
          const swaps = Object.is(state, input.expected);
          if (output !== UNKNOWN && output !== swaps) return REJECT;
          return { ok: true, state: swaps ? input.value : state };
        }
      }
    },
    simplify(ops) {
      // As for the map: an unknown read, or an unknown write of a value never read nor expected by a cas, when no
      // cas is known to have failed, leaves no trace, so it may be taken as never applied.
      if (ops.every((o) => o.returnTime !== undefined)) return ops;
      const failedCas = ops.some((o) => o.input.op === 'cas' && o.returnTime !== undefined && o.output === false);
      const observed = (v: T): boolean =>
        ops.some(
          (o) =>
            (o.input.op === 'read' && o.returnTime !== undefined && Object.is(o.output, v)) ||
            (o.input.op === 'cas' && Object.is(o.input.expected, v)),
        );
      return ops.filter(
        (o) =>
          o.returnTime !== undefined ||
          !(o.input.op === 'read' || (o.input.op === 'write' && !failedCas && !observed(o.input.value))),
      );
    },
    equal: Object.is,
    hash: (s) => (typeof s === 'object' || typeof s === 'function' ? 0 : hashString(`${typeof s}:${String(s)}`)),
    describeOperation(input, output) {
      const out = output === UNKNOWN ? '?' : JSON.stringify(output);
      if (input.op === 'read') return `read() → ${out}`;
      if (input.op === 'write') return `write(${JSON.stringify(input.value)})`;
      return `cas(${JSON.stringify(input.expected)} → ${JSON.stringify(input.value)}) → ${out}`;
    },
    describeState: (s) => JSON.stringify(s) ?? String(s),
  };
}
