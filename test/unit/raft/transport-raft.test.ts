/**
 * End to end: three Raft cores per group, two groups, on three transports over loopback (in-memory storage). The
 * host here is the minimal one the Ready contract asks for: persist, send, apply, advance.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Core, MemoryStorage, type Message } from '../../../src/raft/index.js';
import { seeded, text, bytes } from './network.js';
import { startCluster, waitFor, type Node, releasePorts } from './transport-helpers.js';

const IDS = ['n1', 'n2', 'n3'];
const GROUPS = ['g1', 'g2'];

interface Replica {
  core: Core;
  storage: MemoryStorage;
  applied: string[];
}

class Host {
  readonly replicas = new Map<string, Replica>();
  node: Node | undefined;

  constructor(id: string, seed: number) {
    for (const g of GROUPS) {
      const storage = new MemoryStorage({ voters: IDS, learners: [] });
      const core = new Core({
        id,
        storage,
        random: seeded(seed * 31 + g.length),
        electionTicks: 10,
        heartbeatTicks: 1,
      });
      this.replicas.set(g, { core, storage, applied: [] });
    }
  }

  step(groupId: string, m: Message): void {
    const r = this.replicas.get(groupId);
    if (!r) return;
    r.core.step(m);
    this.process(groupId);
  }

  tick(): void {
    for (const [g, r] of this.replicas) {
      r.core.tick();
      this.process(g);
    }
  }

  process(groupId: string): void {
    const r = this.replicas.get(groupId)!;
    while (r.core.hasReady()) {
      const rd = r.core.ready();
      if (rd.snapshot) r.storage.applySnapshot(rd.snapshot);
      r.storage.append(rd.entries);
      if (rd.hardState) r.storage.setHardState(rd.hardState);
      for (const m of [...rd.messages, ...rd.messagesAfterPersist]) this.node!.t.send(m.to, groupId, m);
      for (const e of rd.committedEntries)
        if (e.type === 'normal' && e.data.byteLength > 0) r.applied.push(text(e.data));
      r.core.advance();
    }
  }
}

let nodes: Node[] = [];
let timer: ReturnType<typeof setInterval> | undefined;
afterEach(async () => {
  clearInterval(timer);
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});

describe('raft cores on the transport', () => {
  it('three nodes elect a leader in each group and commit proposals (some forwarded by followers)', async () => {
    const hosts = new Map(IDS.map((id, i) => [id, new Host(id, i + 1)]));
    nodes = await startCluster(IDS, (id) => ({
      onMessage: (_from: string, groupId: string, m: Message) => hosts.get(id)!.step(groupId, m),
    }));
    for (const n of nodes) hosts.get(n.id)!.node = n;
    timer = setInterval(() => {
      for (const h of hosts.values()) h.tick();
    }, 10);

    const leaderOf = (g: string): Host | undefined =>
      [...hosts.values()].find((h) => h.replicas.get(g)!.core.role === 'leader');
    await waitFor(() => GROUPS.every((g) => leaderOf(g) !== undefined), 'a leader in every group');
    // Every replica knows its leader (followers forward proposals to it).
    await waitFor(
      () => GROUPS.every((g) => [...hosts.values()].every((h) => h.replicas.get(g)!.core.status().lead !== '')),
      'every replica to know its leader',
    );

    const expected = new Map<string, string[]>();
    for (const g of GROUPS) {
      const leader = leaderOf(g)!;
      const follower = [...hosts.values()].find((h) => h !== leader)!;
      const values: string[] = [];
      for (let i = 0; i < 50; i++) {
        const v = `${g}-${i}`;
        // Every fifth proposal is made on a follower and forwarded to the leader over the transport.
        const host = i % 5 === 4 ? follower : leader;
        const out = host.replicas.get(g)!.core.propose(bytes(v));
        expect(out, `${g} ${i}`).toEqual({ ok: true });
        host.process(g);
        values.push(v);
      }
      expected.set(g, values);
    }
    await waitFor(
      () => [...hosts.values()].every((h) => GROUPS.every((g) => h.replicas.get(g)!.applied.length === 50)),
      'every proposal applied on every node',
    );
    for (const g of GROUPS) {
      const logs = [...hosts.values()].map((h) => h.replicas.get(g)!.applied);
      // Same order everywhere; the leader's own proposals in the order made.
      expect(logs[1]).toEqual(logs[0]);
      expect(logs[2]).toEqual(logs[0]);
      expect([...logs[0]!].sort()).toEqual([...expected.get(g)!].sort());
    }
    for (const n of nodes) expect(n.errors).toEqual([]);
  });
});
