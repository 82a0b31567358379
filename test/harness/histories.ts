/**
 * Linearizable key-value histories made up on purpose, for the checker's tests and bench: a real sequential
 * execution on a map, each operation's interval drawn around its linearization point, clients that issue one
 * operation at a time. Every history this makes is linearizable by construction.
 */
import type { KvInput, KvOperation, KvOutput } from '../../src/sim/linearizability-models.js';
import { Random } from '../../src/sim/random.js';

export interface KvHistoryOptions {
  readonly ops: number;
  readonly keys: number;
  readonly clients: number;
  /** Largest distance from an operation's call, and from its return, to its linearization point. */
  readonly spread: number;
  /** Probability that an operation's outcome is unknown (it took effect, but its return is not recorded). */
  readonly unknownRate?: number;
  /** Probability that an unknown operation did NOT take effect (sent, lost before applying). */
  readonly neverAppliedRate?: number;
  /** Leave appends out (put, get, cas and delete only: a register per key, as a replicated map serves). */
  readonly noAppends?: boolean;
}

export function kvHistory(seed: number, o: KvHistoryOptions): KvOperation[] {
  const rnd = new Random(seed);
  const map = new Map<string, string>();
  const busyUntil = new Array<number>(o.clients).fill(-1);
  const out: KvOperation[] = [];
  let time = 0;
  for (let i = 0; i < o.ops; i++) {
    time += 1 + rnd.int(0, 2);
    let free = busyUntil.flatMap((b, c) => (b < time ? [c] : []));
    if (free.length === 0) {
      time = Math.min(...busyUntil) + 1;
      free = busyUntil.flatMap((b, c) => (b < time ? [c] : []));
    }
    const client = rnd.pick(free);
    const callTime = Math.max(busyUntil[client]! + 1, time - rnd.int(0, o.spread));
    const returnTime = time + rnd.int(0, o.spread);
    busyUntil[client] = returnTime;
    const key = `k${rnd.int(0, o.keys - 1)}`;
    const value = `v${i}`;
    const kind = rnd.next();
    const current = map.get(key) ?? null;
    let input: KvInput;
    let output: KvOutput = null;
    if (kind < 0.5) {
      input = { op: 'get', key };
      output = current;
    } else if (kind < 0.75) {
      input = { op: 'put', key, value };
    } else if (kind < 0.88 && o.noAppends !== true) {
      input = { op: 'append', key, value };
    } else if (kind < 0.97 || (kind < 0.88 && o.noAppends === true)) {
      const expected = rnd.chance(0.6) ? current : `v${rnd.int(0, i)}`;
      input = { op: 'cas', key, expected, value };
      output = expected === current;
    } else {
      input = { op: 'delete', key };
    }
    const unknown = rnd.chance(o.unknownRate ?? 0);
    const applied = !(unknown && rnd.chance(o.neverAppliedRate ?? 0));
    if (applied) apply(map, input);
    out.push(unknown ? { client, input, callTime } : { client, input, callTime, returnTime, output });
  }
  return out;
}

function apply(map: Map<string, string>, input: KvInput): void {
  switch (input.op) {
    case 'get':
      return;
    case 'put':
      map.set(input.key, input.value);
      return;
    case 'append':
      map.set(input.key, (map.get(input.key) ?? '') + input.value);
      return;
    case 'delete':
      map.delete(input.key);
      return;
    case 'cas':
      if ((map.get(input.key) ?? null) === input.expected) map.set(input.key, input.value);
      return;
  }
}
