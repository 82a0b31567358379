/**
 * examples/fleet-kv end to end: real node processes on one SQLite control store, 16 groups of 3 replicas.
 *
 * Three nodes start; client loops write, delete and read keys through every live node for the whole test; two more
 * nodes join (3 → 5), two of the first ones are drained with SIGTERM (5 → 3, `deactivate()`), one node is SIGKILLed
 * and, once the others have replaced its replicas, started again on its data directory. After each step every live
 * node reads every key. Every operation is recorded with its call and return times (an operation whose answer was
 * lost, or a 503 saying the write may still apply, is recorded with an unknown outcome), and the whole history must
 * be linearizable for a key-value map (src/sim/linearizability.ts): an acknowledged write is never lost, and a read
 * never returns a value older than one acknowledged before it started. At the end, with no writes in flight, every
 * node must answer every key with the same value, and on a key whose every write was answered, the last one.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { checkOperations } from '../../src/sim/linearizability.js';
import { kvModel, type KvInput, type KvOperation, type KvOutput } from '../../src/sim/linearizability-models.js';
import { Fleet, type FleetWorker } from '../harness/fleet.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';
import { eventually, sleep } from '../harness/wait.js';

const NODE = fileURLToPath(new URL('../../examples/fleet-kv/node.ts', import.meta.url));
const GROUPS = 16;
const KEYS = 40;
const WRITERS = 4;
/** One HTTP request's bound (the node's own request timeout is 5 s). */
const REQUEST_BOUND_MS = 10_000;
/** Start, convergence after a change, drain: each within this. */
const STEP_BOUND_MS = 45_000;

interface Node {
  readonly id: string;
  readonly url: string;
  worker: FleetWorker;
}

interface Status {
  nodes: { id: string; state: string; desired: number }[];
  counts: Record<string, number>;
  groups: {
    name: string;
    health: string;
    detail: string;
    desired: string[];
    desiredLeader: string;
    leader: string;
    voters: string[];
    learners: string[];
  }[];
}

describe('examples/fleet-kv: real node processes, 3 → 5 → 3 nodes, a kill -9', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rebalancer-fleet-kv-'));
  const fleet = new Fleet(dir);
  let ports: number[] = [];
  let failed = true;

  afterAll(async () => {
    await fleet.killAll();
    for (const p of ports) releasePort(p);
    if (failed) console.error(`[fleet-kv] node logs kept in ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  });

  it('keeps every acknowledged write, readable from every node (linearizable), through joins, drains and a crash', async () => {
    ports = await allocatePorts(10);
    const nodes = new Map<string, Node>();
    /** Nodes clients may send requests to: started and not (known to be) dead. A draining node still answers. */
    const live = new Set<string>();

    const start = (i: number): Node => {
      const id = `kv-${i}`;
      const worker = fleet.spawn({
        name: `${id}-${fleet.workers.filter((w) => w.name.startsWith(`${id}-`)).length}`,
        script: NODE,
        env: {
          NODE_ID: id,
          HTTP_PORT: String(ports[i - 1]),
          RAFT_PORT: String(ports[i + 4]),
          REBALANCER_STORE: `sqlite:${join(dir, 'control.db')}`,
          DATA_DIR: join(dir, 'data', id),
          FLEET_SECRET: 'the fleet-kv test secret, 32 bytes',
          KV_GROUPS: String(GROUPS),
          SESSION_TTL_MS: '5000',
          GRACE_PERIOD_MS: '2000',
          NODE_OPTIONS: undefined,
        },
      });
      const node: Node = { id, url: `http://127.0.0.1:${ports[i - 1]}`, worker };
      nodes.set(id, node);
      return node;
    };
    const serving = async (n: Node): Promise<void> => {
      await n.worker.waitForLine(new RegExp(`^${n.id} serving `), { timeoutMs: STEP_BOUND_MS });
      live.add(n.id);
    };

    // ---- the client: every operation recorded for the checker

    const history: KvOperation[] = [];
    const t0 = performance.now();
    const now = (): number => performance.now() - t0;
    const keys = Array.from({ length: KEYS }, (_, i) => `key-${i}`);
    let seq = 0;
    /** Why writes ended with an unknown outcome, counted, for the log. */
    const unknownWhy = new Map<string, number>();
    const count = (m: Map<string, number>, k: string): void => void m.set(k, (m.get(k) ?? 0) + 1);
    const phase = (what: string): void => console.log(`[fleet-kv] ${(now() / 1000).toFixed(1)} s: ${what}`);

    /** Send one operation through node `via`; record it unless it surely had no effect. */
    const op = async (via: string, input: KvInput, client: string): Promise<KvOutput | undefined> => {
      const url = `${nodes.get(via)!.url}/kv/${encodeURIComponent(input.key)}`;
      const init: RequestInit =
        input.op === 'put'
          ? { method: 'PUT', body: input.value }
          : input.op === 'delete'
            ? { method: 'DELETE' }
            : { method: 'GET' };
      const callTime = now();
      let status: number;
      let body: string;
      try {
        const res = await fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_BOUND_MS) });
        status = res.status;
        body = await res.text();
      } catch (error) {
        // Refused connection: the node is gone, nothing was sent.
        if ((error as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED') return undefined;
        // Lost answer (the node died, or the bound passed): a write may have applied, a read constrains nothing.
        if (input.op !== 'get') {
          history.push({ client, input, callTime });
          count(unknownWhy, `${via}: ${String((error as Error).cause ?? error)}`);
        }
        return undefined;
      }
      const returnTime = now();
      if (input.op === 'get' && (status === 200 || status === 404)) {
        const output = status === 200 ? body : null;
        history.push({ client, input, callTime, returnTime, output });
        return output;
      }
      if (input.op !== 'get' && (status === 200 || status === 404)) {
        history.push({ client, input, callTime, returnTime, output: null });
        return null;
      }
      if (
        input.op !== 'get' &&
        (status !== 503 || (JSON.parse(body) as { outcome?: string }).outcome !== 'not-applied')
      ) {
        history.push({ client, input, callTime });
        count(unknownWhy, `${via}: ${status} ${(JSON.parse(body) as { error?: string }).error}`);
      }
      expect([500, 503], `${via} ${init.method} ${input.key}: ${status} ${body}`).toContain(status);
      return undefined;
    };

    let writing = true;
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(Math.random() * xs.length)]!;
    const writer = async (w: number): Promise<void> => {
      const client = `writer-${w}`;
      // Each writer owns its keys (one operation per key at a time, as most applications do); reads cover all.
      const mine = keys.filter((_, i) => i % WRITERS === w);
      while (writing) {
        const via = pick([...live]);
        if (via === undefined) {
          await sleep(50);
          continue;
        }
        const key = pick(mine);
        const r = Math.random();
        if (r < 0.6) await op(via, { op: 'put', key, value: `v${++seq}` }, client);
        else if (r < 0.7) await op(via, { op: 'delete', key }, client);
        else await op(via, { op: 'get', key: pick(keys) }, client);
      }
    };

    /** Every live node reads every key (retried while a node answers 503, e.g. no leader for a moment). */
    const sweep = async (what: string): Promise<Map<string, Map<string, KvOutput>>> => {
      const seen = new Map<string, Map<string, KvOutput>>();
      for (const id of [...live].sort()) {
        const values = new Map<string, KvOutput>();
        for (const key of keys) {
          const read = await eventually(
            async () => {
              const value = await op(id, { op: 'get', key }, `sweep-${id}`);
              return value === undefined ? false : { value };
            },
            {
              what: `${what}: ${key} read through ${id}`,
              timeoutMs: STEP_BOUND_MS,
              intervalMs: 200,
              context: logs,
            },
          );
          values.set(key, read.value);
        }
        seen.set(id, values);
      }
      return seen;
    };

    const status = async (): Promise<Status> => {
      const via = [...live].sort()[0]!;
      const res = await fetch(`${nodes.get(via)!.url}/status`, { signal: AbortSignal.timeout(REQUEST_BOUND_MS) });
      expect(res.status).toBe(200);
      return (await res.json()) as Status;
    };
    /**
     * Every group has exactly its desired members as voters (no learners), all of them among the nodes `ids`, which
     * are exactly the live nodes, each holding some. The desired leader is not required: moving leadership is an optimisation, retried until it
     * succeeds, and on a busy machine a replica that just caught up can lag again before the transfer completes.
     */
    const converged = async (what: string, ids: readonly string[]): Promise<void> => {
      const s = await eventually(
        async () => {
          const s = await status();
          expect(s.nodes.map((n) => n.id).sort(), what).toEqual([...ids].sort());
          for (const g of s.groups) {
            expect({ name: g.name, voters: [...g.voters].sort(), learners: g.learners }, JSON.stringify(g)).toEqual({
              name: g.name,
              voters: [...g.desired].sort(),
              learners: [],
            });
          }
          expect(s.groups.length).toBe(GROUPS);
          // Only on these nodes: a dead node's replicas are replaced, a drained node's moved away.
          const elsewhere = s.groups.filter((g) => g.voters.some((v) => !ids.includes(v)));
          expect(
            elsewhere.map((g) => `${g.name}: ${g.voters.join(',')}`),
            what,
          ).toEqual([]);
          for (const n of s.nodes) expect(n.desired, `${what}: groups on ${n.id}`).toBeGreaterThan(0);
          return s;
        },
        { what, timeoutMs: STEP_BOUND_MS, intervalMs: 500, context: logs },
      );
      const elsewhere = s.groups.filter((g) => g.leader !== g.desiredLeader).map((g) => g.name);
      phase(
        `${what}: converged${elsewhere.length > 0 ? ` (leader not yet the desired one: ${elsewhere.join(', ')})` : ''}`,
      );
    };
    const logs = (): string => `node logs in ${dir}`;

    // ---- the scenario

    phase('starting kv-1..3');
    const first = [1, 2, 3].map(start);
    await Promise.all(first.map(serving));
    await converged('16 groups on kv-1..3', ['kv-1', 'kv-2', 'kv-3']);
    // A writer's failure (an unexpected answer) is kept for the end, so that its promise never rejects unheard.
    const writerErrors: unknown[] = [];
    const writers = Array.from({ length: WRITERS }, (_, w) => writer(w).catch((e: unknown) => writerErrors.push(e)));
    await sleep(2000);
    await sweep('three nodes');

    // 3 → 5: the new nodes get replicas (learners, caught up, promoted; extra members removed).
    phase('starting kv-4, kv-5');
    const added = [4, 5].map(start);
    await Promise.all(added.map(serving));
    await converged('after kv-4 and kv-5 joined', ['kv-1', 'kv-2', 'kv-3', 'kv-4', 'kv-5']);
    await sweep('five nodes');

    // 5 → 3: drain kv-1 and kv-2 (SIGTERM → deactivate()); they answer until they have left.
    phase('draining kv-1, kv-2');
    const drained = [nodes.get('kv-1')!, nodes.get('kv-2')!];
    for (const n of drained) n.worker.signal('SIGTERM');
    for (const n of drained) {
      expect(await n.worker.waitExit(STEP_BOUND_MS), `${n.id} drained and exited; ${logs()}`).toBe(true);
      live.delete(n.id);
      expect(n.worker.exitStatus, logs()).toBe('code 0');
      expect(n.worker.lines(), logs()).toContain(`${n.id} left`);
    }
    await converged('after kv-1 and kv-2 drained', ['kv-3', 'kv-4', 'kv-5']);
    await sweep('after the drain');

    // kill -9 kv-4 (the others keep a majority of every group), then start it again on its data directory.
    phase('kill -9 kv-4');
    live.delete('kv-4');
    nodes.get('kv-4')!.worker.kill();
    await nodes.get('kv-4')!.worker.exit;
    await sweep('kv-4 dead');
    // Once its session has expired and the grace period passed, its replicas are removed from their groups (each
    // group goes on with two); started again, its stale replicas are dropped and it is added back as a new member.
    await converged('kv-4 replaced', ['kv-3', 'kv-5']);
    await sweep('kv-4 replaced');
    phase('restarting kv-4');
    await serving(start(4));
    await converged('after kv-4 restarted', ['kv-3', 'kv-4', 'kv-5']);
    await sweep('kv-4 back');

    phase('final reads');
    writing = false;
    await Promise.all(writers);
    expect(writerErrors.map(String)).toEqual([]);

    // No write in flight: every node gives the same answer for every key.
    const final = await sweep('final');
    const reference = final.get('kv-3')!;
    for (const [id, values] of final) expect([...values], `${id} agrees with kv-3`).toEqual([...reference]);
    // On a key whose every write was answered, the last acknowledged one is what every node reads. (A write whose
    // answer was lost may take effect at any time after its call, so on the other keys the checker decides.)
    for (const key of keys) {
      const writes = history.filter((o) => o.input.key === key && o.input.op !== 'get');
      const lastAcked = writes.at(-1);
      if (lastAcked === undefined || writes.some((o) => o.returnTime === undefined)) continue;
      expect(reference.get(key), key).toBe(lastAcked.input.op === 'put' ? lastAcked.input.value : null);
    }
    const acked = history.filter((o) => o.input.op !== 'get' && o.returnTime !== undefined).length;
    expect(acked, 'writes acknowledged').toBeGreaterThan(100);

    const unknown = history.filter((o) => o.returnTime === undefined).length;
    phase(`unknown outcomes: ${JSON.stringify([...unknownWhy])}`);
    console.log(
      `[fleet-kv] ${history.length} operations recorded: ${acked} writes acknowledged, ${unknown} of unknown outcome`,
    );
    const check = checkOperations(kvModel(), history, { timeLimitMs: 30_000 });
    expect(check.result, check.result === 'ok' ? '' : check.message).toBe('ok');
    failed = false;
  }, 240_000);
});
