/**
 * The counter state machine the fleet tests run (in-process nodes, the CLI, the control-store loss): a total that
 * `{ add }` commands raise; `total` reads it. The same as the README's (examples/readme/raft.ts).
 */
import type { StateMachine } from '../../src/raft/node/state-machine.js';

export interface Counter {
  readonly total: number;
}

export const counter: StateMachine<Counter, { add: number }, 'total', number, number> = {
  initial: () => ({ total: 0 }),
  command: (state, c) => ({ state: { total: state.total + c.add }, result: state.total + c.add }),
  query: (state) => state.total,
  snapshot: (state) => new TextEncoder().encode(JSON.stringify(state)),
  restore: (bytes) => JSON.parse(new TextDecoder().decode(bytes)) as Counter,
};
