/**
 * The key-value state machine of the Raft simulation, tests and benchmark: the operations of the checker's kvModel
 * (src/sim/linearizability-models.ts), so a client history of it goes to the checker as it is. `append` makes a
 * double apply visible (the value grows twice).
 */
import type { StateMachine } from '../raft/node/state-machine.js';
import type { KvInput, KvOutput } from './linearizability-models.js';

export type KvCommand = Exclude<KvInput, { op: 'get' }>;
export type KvQuery = Extract<KvInput, { op: 'get' }>;

export function kvStateMachine(): StateMachine<Map<string, string>, KvCommand, KvQuery, KvOutput, string | null> {
  return {
    initial: () => new Map(),
    command(state, c) {
      const before = state.get(c.key) ?? null;
      switch (c.op) {
        case 'put':
          state.set(c.key, c.value);
          return { state, result: null };
        case 'append':
          state.set(c.key, (before ?? '') + c.value);
          return { state, result: null };
        case 'delete':
          state.delete(c.key);
          return { state, result: null };
        case 'cas': {
          const swaps = before === c.expected;
          if (swaps) state.set(c.key, c.value);
          return { state, result: swaps };
        }
      }
    },
    query: (state, q) => state.get(q.key) ?? null,
    snapshot: (state) => new TextEncoder().encode(JSON.stringify([...state])),
    restore: (bytes) => new Map(JSON.parse(new TextDecoder().decode(bytes)) as [string, string][]),
  };
}
