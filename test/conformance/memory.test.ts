import { MemoryServer, MemoryStore } from '../../src/backends/memory/index.js';
import { inProcessClient } from './clients.js';
import { describeConformance } from './suite.js';

describeConformance('memory', async () => {
  const server = new MemoryServer();
  return {
    backend: 'memory',
    url: undefined,
    ttlMs: 1000,
    // The memory server expires a session exactly at its deadline; the rest is event-loop lag on a loaded machine.
    expiryBoundMs: 500,
    open: (namespace) => Promise.resolve(new MemoryStore({ server, namespace })),
    client: (namespace) => {
      const store = new MemoryStore({ server, namespace });
      return Promise.resolve(
        inProcessClient(store, {
          // A paused process sends nothing: every request fails before reaching the server.
          onPause: () => {
            store.faults = { request: () => ({ fail: 'before' }), notification: () => ({ drop: true }) };
          },
          onResume: () => {
            store.faults = {};
          },
          onKill: () => store.crash(),
        }),
      );
    },
    teardown: () => Promise.resolve(),
  };
});
