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
 * Drop, from one key's history, the unknown-outcome operations that cannot matter: reads, and puts and appends whose
 * value nobody observed — no read returned a value containing it, no cas expected a value containing it — when no
 * cas on the key is known to have failed. Why that is sound: in any linearization with such a write, the state it
 * leaves is overwritten before any operation that could tell (a read would observe it; a cas that succeeded would
 * expect it; one that failed is excluded), so leaving it out (it never happened) is a linearization too.
 */
function simplifyKv(ops: readonly KvOperation[]): readonly KvOperation[] {
  const unknownOnes = ops.filter((o) => o.returnTime === undefined);
  if (unknownOnes.length === 0) return ops;
  const seen: string[] = [];
  let failedCas = false;
  for (const o of ops) {
    if (o.input.op === 'get' && o.returnTime !== undefined && typeof o.output === 'string') seen.push(o.output);
    if (o.input.op === 'cas') {
      if (o.input.expected !== null) seen.push(o.input.expected);
      if (o.returnTime !== undefined && o.output === false) failedCas = true;
    }
  }
  const harmless = (o: KvOperation): boolean => {
    if (o.returnTime !== undefined) return false;
    if (o.input.op === 'get') return true;
    if (failedCas || (o.input.op !== 'put' && o.input.op !== 'append')) return false;
    const v = o.input.value;
    return v !== '' && !seen.some((s) => s.includes(v));
  };
  return ops.filter((o) => !harmless(o));
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
