/**
 * Commands from a node that holds no replica (issue 14's `command(group, …)` from any node): three Raft nodes hold
 * group 'kv', a fourth holds none and reaches it through RaftNode.request + serveGroupRequest with a
 * RemoteGroupClient. The leader is closed mid-stream: the commands go on through the other nodes, and every
 * acknowledged command is in the state exactly once (no command at all twice).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startRaftNode, TimeoutError, type RaftGroup, type RaftNode } from '../../src/raft/api.js';
import {
  RemoteGroupClient,
  decodeGroupAnswer,
  decodeGroupRequest,
  encodeGroupRequest,
  serveGroupRequest,
} from '../../src/raft/node/remote-client.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../../src/sim/raft-kv.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';

const SECRET = 'a test secret of enough bytes';
const REPLICAS = ['n1', 'n2', 'n3'];
const IDS = [...REPLICAS, 'n4'];
type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

const realTimers = {
  setTimeout: (fn: () => void, ms: number): unknown => setTimeout(fn, ms),
  clearTimeout: (h: unknown) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

describe('commands from a node without a replica', () => {
  it('go on through another node when the leader closes; each acknowledged command applies exactly once', async () => {
    const ports = await allocatePorts(IDS.length);
    const nodes = new Map<string, RaftNode>();
    const groups = new Map<string, Kv>();
    for (const [i, id] of IDS.entries()) {
      const dir = await mkdtemp(join(tmpdir(), `raft-remote-${id}-`));
      const node = await startRaftNode({
        id,
        dataDir: dir,
        listen: `127.0.0.1:${ports[i]}`,
        peers: Object.fromEntries(IDS.filter((p) => p !== id).map((p) => [p, `127.0.0.1:${ports[IDS.indexOf(p)]}`])),
        secret: SECRET,
        tickMs: 20,
        electionTicks: 10,
      });
      nodes.set(id, node);
      cleanup.push(async () => {
        await node.close();
        await rm(dir, { recursive: true, force: true });
        releasePort(ports[i]!);
      });
      if (REPLICAS.includes(id)) {
        groups.set(id, node.openGroup('kv', { members: REPLICAS, stateMachine: kvStateMachine() }));
      }
      // Every node serves: one without the group answers "no replica" and the client moves on.
      node.handleRequests((_from, payload) =>
        serveGroupRequest((name) => (name === 'kv' ? groups.get(id) : undefined) as RaftGroup | undefined, payload),
      );
    }
    await groups.get('n1')!.ready({ timeoutMs: 10_000 });
    const n4 = nodes.get('n4')!;
    let cachedLeader: string | undefined;
    // (session, seq) → the nodes it was sent to: a retry elsewhere keeps both.
    const sentTo = new Map<string, string[]>();
    const client = new RemoteGroupClient<KvCommand, KvQuery, KvOutput, string | null>({
      group: 'kv',
      request: (peer, payload, timeoutMs) => {
        const req = decodeGroupRequest(payload);
        if (req.kind === 'command') {
          const key = `${req.session}/${req.seq}`;
          sentTo.set(key, [...(sentTo.get(key) ?? []), peer]);
        }
        return n4.request(peer, payload, { timeoutMs });
      },
      // The cached leader first, then the others; n4 itself never (it holds no replica).
      candidates: () => [...(cachedLeader ? [cachedLeader] : []), ...REPLICAS.filter((r) => r !== cachedLeader)],
      onLeaderHint: (l) => (cachedLeader = l),
      clock: () => performance.now(),
      timers: realTimers,
      timeoutMs: 15_000,
      attemptTimeoutMs: 2000,
    });

    const acked: string[] = [];
    const unknown: string[] = [];
    let closed: string | undefined;
    const worker = async (w: number): Promise<void> => {
      for (let i = 0; i < 40; i++) {
        const token = `w${w}.${i};`;
        try {
          await client.command({ op: 'append', key: 'log', value: token });
          acked.push(token);
        } catch (err) {
          if (!(err instanceof TimeoutError)) throw err;
          unknown.push(token);
        }
      }
    };
    const killer = (async () => {
      await until(() => acked.length >= 20, '20 commands acknowledged');
      closed = [...groups.entries()].find(([, g]) => g.status().role === 'leader')![0];
      groups.delete(closed);
      await nodes.get(closed)!.close();
    })();
    await Promise.all([worker(1), worker(2), worker(3), killer]);

    expect(closed).toBeDefined();
    expect(acked.length + unknown.length).toBe(120);
    expect(acked.length).toBeGreaterThan(100);
    // The commands after the close went through another node: the leader learnt from the answers moved.
    expect(cachedLeader).not.toBe(closed);
    const value = (await client.query({ op: 'get', key: 'log' }))!;
    const applied = value
      .split(';')
      .filter((t) => t !== '')
      .map((t) => `${t};`);
    // Nothing applied twice; everything acknowledged applied; nothing applied that was never sent.
    expect(new Set(applied).size).toBe(applied.length);
    for (const t of acked) expect(applied).toContain(t);
    for (const t of applied) expect([...acked, ...unknown]).toContain(t);
    // Every surviving replica holds the same.
    for (const g of groups.values()) expect(await g.query({ op: 'get', key: 'log' })).toBe(value);
    // Commands in flight at the close were sent again, to another node, as the same (session, seq).
    const retried = [...sentTo.values()].filter((peers) => peers.length > 1);
    expect(retried.length).toBeGreaterThan(0);
    expect(retried.some((peers) => peers[0] === closed)).toBe(true);
    expect(new Set([...sentTo.keys()].map((k) => k.split('/')[0])).size).toBe(1);

    // A replica closed (dropped, moved away) before a request reaches it answers as a node without one: nothing was
    // proposed, so the client goes on and counts nothing as possibly applied.
    const [survivor, handle] = [...groups.entries()][0]!;
    await nodes.get(survivor)!.closeGroup('kv');
    const payload = new TextEncoder().encode(JSON.stringify({ op: 'append', key: 'log', value: 'late;' }));
    for (const req of [
      { kind: 'command', group: 'kv', timeoutMs: 500, session: client.session!, seq: 10_000, lowest: 10_000, payload },
      { kind: 'query', group: 'kv', timeoutMs: 500, consistency: 'linearizable', payload },
    ] as const) {
      const answer = decodeGroupAnswer(await serveGroupRequest(() => handle as RaftGroup, encodeGroupRequest(req)));
      expect(answer, req.kind).toEqual({ kind: 'no-replica', leader: undefined });
    }
  }, 60_000);
});
