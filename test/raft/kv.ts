/**
 * The key-value state machine the Raft tests, the simulator's checker model and the benchmark use: put, get, and
 * append (which makes a double apply visible: the value grows twice).
 */
import type { StateMachine } from '../../src/raft/api.js';

export type KvCommand =
  | { readonly op: 'put'; readonly key: string; readonly value: string }
  | { readonly op: 'append'; readonly key: string; readonly value: string };
export type KvQuery = { readonly op: 'get'; readonly key: string };

export function kvStateMachine(): StateMachine<Map<string, string>, KvCommand, KvQuery, string | null, string | null> {
  return {
    initial: () => new Map(),
    command: (state, c) => {
      const before = state.get(c.key) ?? null;
      state.set(c.key, c.op === 'put' ? c.value : (before ?? '') + c.value);
      return { state, result: before };
    },
    query: (state, q) => state.get(q.key) ?? null,
    snapshot: (state) => new TextEncoder().encode(JSON.stringify([...state])),
    restore: (bytes) => new Map(JSON.parse(new TextDecoder().decode(bytes)) as [string, string][]),
  };
}
