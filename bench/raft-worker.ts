/**
 * Load worker of `npm run bench -- raft` (not a benchmark by itself): forked by bench/raft.ts with an IPC channel,
 * so that the client load never competes with the measuring process for its event loop. Protocol in
 * bench/raft-protocol.ts.
 *
 * A target plugs in through CLIENTS, a table keyed by WorkerInit['kind']: given the init message, open a client
 * whose `put` resolves once the target acknowledged the write. The load loop, the failover probe and the protocol
 * are the same for every target, so both are measured by one yardstick.
 */
import { Etcd3, type IOptions } from 'etcd3';
import type { FailoverRequest, FailoverResult, ParentMessage, WorkerInit, WorkerMessage } from './raft-protocol.js';
import { runLoad } from './raft-load.js';

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
  // The lead's Raft runtime (src/raft/node/) plugs in here: open a client of the three-node group described by
  // `init` (the fields that the rebalancer target's start() put in its workerInit), and return its put.
  rebalancer: async () => {
    throw new Error('the rebalancer target of the raft bench is not built yet (bench/raft-worker.ts CLIENTS)');
  },
};

async function openClient(init: WorkerInit, purpose: ClientPurpose): Promise<BenchClient> {
  switch (init.kind) {
    case 'etcd':
      return CLIENTS.etcd(init, purpose);
    case 'rebalancer':
      return CLIENTS.rebalancer(init, purpose);
  }
}

function send(m: WorkerMessage): void {
  process.send!(m);
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Start a put every intervalMs (each bounded by callTimeoutMs, several may overlap) until one succeeds: the
 * recovery time is then known to within intervalMs, however long a failing attempt takes to fail.
 */
async function probeUntilRecovered(probe: BenchClient, req: FailoverRequest): Promise<FailoverResult> {
  const value = new Uint8Array(16);
  let attempts = 0;
  let failures = 0;
  let firstFailure: string | undefined;
  let recovered: number | undefined;
  const pending = new Set<Promise<void>>();
  while (recovered === undefined && Date.now() - req.sinceEpochMs < req.maxMs) {
    const n = attempts++;
    const p = probe.put(`bench/failover/${n % 100}`, value, req.callTimeoutMs).then(
      () => {
        recovered ??= Date.now();
      },
      (err: unknown) => {
        failures++;
        firstFailure ??= message(err);
      },
    );
    pending.add(p);
    void p.finally(() => pending.delete(p));
    await sleep(req.intervalMs);
  }
  // Let the stragglers settle (each is bounded by callTimeoutMs), so that none outlives this probe.
  await Promise.all(pending);
  if (recovered === undefined) {
    throw new Error(
      `no put succeeded within ${req.maxMs} ms of the kill (${attempts} attempts; first failure: ${firstFailure})`,
    );
  }
  return {
    recoveredEpochMs: recovered,
    ms: recovered - req.sinceEpochMs,
    attempts,
    failures,
    ...(firstFailure === undefined ? {} : { firstFailure }),
  };
}

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
      send({ id: m.id, recovered: await probeUntilRecovered(probe, m.failover) });
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
