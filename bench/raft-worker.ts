/**
 * Load worker of `npm run bench -- raft` (not a benchmark by itself): forked by bench/raft.ts with an IPC channel,
 * so that the client load never competes with the measuring process for its event loop. Protocol in
 * bench/raft-protocol.ts.
 *
 * A client-server target plugs in through CLIENTS, a table keyed by WorkerInit['kind']: given the init message, open
 * a client whose `put` resolves once the target acknowledged the write. The load loop (bench/raft-load.ts) and the
 * failover probe (bench/raft-probe.ts) are shared with the Rebalancer target, whose load runs inside its node
 * processes instead (bench/raft-node.ts): an embedded library has no client process.
 */
import { Etcd3, type IOptions } from 'etcd3';
import type { ParentMessage, WorkerInit, WorkerMessage } from './raft-protocol.js';
import { runLoad } from './raft-load.js';
import { probeUntilRecovered } from './raft-probe.js';

/** A target's client, as the worker uses it. */
export interface BenchClient {
  /**
   * Write one key; resolves when the target acknowledged it. With `timeoutMs`, give up (reject) after that long —
   * used by the failover probe, so that an attempt stuck on a dead leader does not hide a recovered cluster.
   */
  put(key: string, value: Uint8Array, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** What a client is for: the probe gets its own client, so the load client's state cannot help or hinder it. */
export type ClientPurpose = 'load' | 'probe';

type ClientFactory<K extends WorkerInit['kind']> = (
  init: Extract<WorkerInit, { kind: K }>,
  purpose: ClientPurpose,
) => Promise<BenchClient>;

type PassThroughPolicy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

/**
 * etcd3's default cockatiel policies retry three times and open a per-host circuit breaker for 5 s: the load
 * would then measure the client's retries, and the failover probe its breaker. Pass-throughs leave retries to the
 * bench (the same for every target).
 */
const passThrough = {
  execute: (fn: (ctx: { signal: AbortSignal; attempt: number }) => unknown, signal?: AbortSignal) =>
    Promise.resolve().then(() => fn({ signal: signal ?? new AbortController().signal, attempt: 0 })),
} as unknown as PassThroughPolicy;

const CLIENTS: { readonly [K in WorkerInit['kind']]: ClientFactory<K> } = {
  etcd: async (init) => {
    // All three endpoints, as an etcd user would configure them: the client spreads calls over the members and
    // a follower forwards a put to the leader.
    const client = new Etcd3({
      hosts: [...init.endpoints],
      faultHandling: { host: () => passThrough, global: passThrough },
    });
    return {
      put: async (key, value, timeoutMs) => {
        const buf = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
        const b = client.put(key).value(buf);
        if (timeoutMs !== undefined) b.options({ deadline: Date.now() + timeoutMs });
        await b.exec();
      },
      close: async () => client.close(),
    };
  },
};

async function openClient(init: WorkerInit, purpose: ClientPurpose): Promise<BenchClient> {
  switch (init.kind) {
    case 'etcd':
      return CLIENTS.etcd(init, purpose);
  }
}

function send(m: WorkerMessage): void {
  process.send!(m);
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

let load: BenchClient | undefined;
let probe: BenchClient | undefined;
let init: WorkerInit | undefined;

async function handle(m: ParentMessage): Promise<void> {
  if ('close' in m) {
    await Promise.allSettled([load?.close(), probe?.close()]);
    process.exit(0);
  }
  try {
    if ('run' in m) {
      const client = load!;
      const result = await runLoad({ ...m.run, put: (k, v) => client.put(k, v) });
      send({ id: m.id, result });
    } else if ('arm' in m) {
      probe ??= await openClient(init!, 'probe');
      await probe.put('bench/failover/arm', new Uint8Array(16), m.arm.callTimeoutMs);
      send({ id: m.id, armed: true });
    } else if ('failover' in m) {
      if (probe === undefined) throw new Error('failover before arm');
      const p = probe;
      send({ id: m.id, recovered: await probeUntilRecovered((k, v, t) => p.put(k, v, t), m.failover) });
    }
  } catch (err) {
    send({ id: m.id, error: message(err) });
  }
}

if (process.send === undefined) {
  process.stderr.write('bench/raft-worker.ts is forked by bench/raft.ts (npm run bench -- raft), not run directly\n');
  process.exit(2);
}
// The parent's death closes the channel: exit with it, never outlive the bench.
process.on('disconnect', () => process.exit(0));
process.on('message', (raw: WorkerInit | ParentMessage) => {
  if (init === undefined) {
    init = raw as WorkerInit;
    openClient(init, 'load').then(
      (c) => {
        load = c;
        send({ ready: true });
      },
      (err: unknown) => send({ error: message(err) }),
    );
    return;
  }
  void handle(raw as ParentMessage);
});
