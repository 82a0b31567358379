/**
 * `rebalancer/memory`: an in-memory store with an injected clock and fault
 * hooks. Used by the simulator and by tests; state lives in a MemoryServer
 * that several MemoryStore clients (simulated processes) share.
 */
export { MemoryServer } from './server.js';
export {
  MemoryStore,
  type MemoryFaults,
  type MemoryRequestKind,
  type MemoryStoreOptions,
  type NotificationFate,
  type RequestFate,
} from './store.js';

import { MemoryStore, type MemoryStoreOptions } from './store.js';

/** Create an in-memory store (a private server unless `server` is given). */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  return new MemoryStore(options);
}
