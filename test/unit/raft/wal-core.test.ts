/**
 * The write-ahead log under real Raft cores: three replicas, each with its own simulated disk and log, messages
 * passed in process. A host persists each Ready through the log and sends `messagesAfterPersist` only after its
 * persist() resolved. Crashes lose what was not synced and tear the last write; what a replica applied (committed
 * by a quorum) must survive them, in the same order everywhere.
 */
import { describe, expect, it } from 'vitest';
import { Core, type Message, type NodeId } from '../../../src/raft/index.js';
import { SimDisk, Wal, type GroupStorage } from '../../../src/raft/wal/index.js';
import { bytes, seeded, text } from './network.js';

const IDS = ['a', 'b', 'c'];
const membership = { voters: IDS, learners: [] };
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Node {
  id: NodeId;
  disk: SimDisk;
  wal: Wal;
  storage: GroupStorage;
  core: Core;
  /** Applied commands, by index. */
  applied: Map<number, string>;
  busy: boolean;
  /** Bumped by a crash: a Ready handled by the previous incarnation must not send or advance. */
  epoch: number;
}

class Cluster {
  readonly nodes = new Map<NodeId, Node>();
  queue: Message[] = [];
  #seed = 1;

  async start(id: NodeId, disk: SimDisk): Promise<Node> {
    const wal = await Wal.open(disk.view(), { segmentBytes: 4096 });
    const storage = wal.group('g', membership);
    const core = new Core({
      id,
      storage,
      random: seeded(this.#seed++ * 31),
      electionTicks: 10,
      heartbeatTicks: 1,
      applied: storage.snapshot().meta.index,
    });
    const old = this.nodes.get(id);
    const node: Node = { id, disk, wal, storage, core, applied: new Map(), busy: false, epoch: (old?.epoch ?? 0) + 1 };
    this.nodes.set(id, node);
    return node;
  }

  /** Power loss on a node, and a restart from its disk. */
  async crash(id: NodeId): Promise<Node> {
    const n = this.nodes.get(id)!;
    n.epoch++;
    n.disk.crash();
    n.disk.holdSyncs = false;
    this.queue = this.queue.filter((m) => m.from !== id && m.to !== id);
    return this.start(id, n.disk);
  }

  #handle(n: Node): void {
    const rd = n.core.ready();
    const epoch = n.epoch;
    n.busy = true;
    this.queue.push(...rd.messages);
    void n.storage
      .persist({ snapshot: rd.snapshot, entries: rd.entries, hardState: rd.hardState })
      .then(() => {
        if (n.epoch !== epoch) return; // this incarnation crashed
        this.queue.push(...rd.messagesAfterPersist);
        for (const e of rd.committedEntries) {
          if (e.type === 'normal' && e.data.byteLength > 0) n.applied.set(e.index, text(e.data));
        }
        n.core.advance();
        n.busy = false;
      })
      .catch(() => undefined);
  }

  /** One round: handle Readies, deliver the queued messages, let the disks work. */
  async round(deliverFraction = 1, rnd: () => number = () => 0): Promise<void> {
    for (const n of this.nodes.values()) if (!n.busy && n.core.hasReady()) this.#handle(n);
    const batch = this.queue;
    this.queue = [];
    for (const m of batch) {
      if (deliverFraction < 1 && rnd() > deliverFraction) {
        this.queue.push(m);
        continue;
      }
      this.nodes.get(m.to)?.core.step(m);
    }
    await turn();
  }

  async settle(): Promise<void> {
    for (let i = 0; i < 2000; i++) {
      await this.round();
      const quiet = this.queue.length === 0 && [...this.nodes.values()].every((n) => !n.busy && !n.core.hasReady());
      if (quiet) return;
    }
    throw new Error('did not settle');
  }

  leader(): Node | undefined {
    return [...this.nodes.values()].find((n) => n.core.role === 'leader');
  }

  async elect(): Promise<Node> {
    for (let i = 0; i < 500; i++) {
      const l = this.leader();
      if (l !== undefined) return l;
      for (const n of this.nodes.values()) n.core.tick();
      await this.settle();
    }
    throw new Error('no leader');
  }
}

describe('raft write-ahead log under three cores', () => {
  it('a replica restarted from its log has its term, vote and entries', async () => {
    const c = new Cluster();
    for (const id of IDS) await c.start(id, new SimDisk(seeded(id.charCodeAt(0))));
    const leader = await c.elect();
    for (let i = 0; i < 20; i++) expect(leader.core.propose(bytes(`cmd-${i}`)).ok).toBe(true);
    await c.settle();
    const follower = [...c.nodes.values()].find((n) => n !== leader)!;
    const before = { hs: follower.storage.hardState(), last: follower.storage.lastIndex() };
    const restarted = await c.crash(follower.id);
    expect(restarted.storage.hardState()).toEqual(before.hs);
    expect(restarted.storage.lastIndex()).toBe(before.last);
    expect(restarted.core.status().term).toBe(before.hs.term);
    expect(restarted.core.status().vote).toBe(before.hs.vote);
    // It applies again from the log, and keeps up.
    for (let i = 20; i < 25; i++) leader.core.propose(bytes(`cmd-${i}`));
    await c.settle();
    await c.elect();
    for (let t = 0; t < 5; t++) {
      for (const n of c.nodes.values()) n.core.tick();
      await c.settle();
    }
    const want = [...leader.applied.values()];
    expect(want).toContain('cmd-24');
    expect([...restarted.applied.values()]).toEqual(want);
  });

  it('what any replica applied survives crashes of every replica mid-write, in the same order everywhere', async () => {
    for (let seed = 1; seed <= 15; seed++) {
      const rnd = seeded(seed * 101);
      const c = new Cluster();
      for (const id of IDS) {
        const disk = new SimDisk(seeded(seed * 1000 + id.charCodeAt(0)));
        await c.start(id, disk);
      }
      const applied = new Map<number, string>();
      const record = (): void => {
        for (const n of c.nodes.values()) {
          for (const [i, v] of n.applied) {
            if (applied.has(i)) expect(applied.get(i), `index ${i} applied differently`).toBe(v);
            else applied.set(i, v);
          }
        }
      };
      let cmd = 0;
      for (let phase = 0; phase < 6; phase++) {
        const leader = await c.elect();
        for (const n of c.nodes.values()) n.disk.holdSyncs = true;
        for (let step = 0; step < 30; step++) {
          if (rnd() < 0.5) c.leader()?.core.propose(bytes(`cmd-${cmd++}`));
          if (rnd() < 0.3) for (const n of c.nodes.values()) n.core.tick();
          for (const n of c.nodes.values()) if (rnd() < 0.6) n.disk.release();
          await c.round(0.7, rnd);
          record();
        }
        // Power loss on one replica or on all of them, with writes in flight.
        const victims = rnd() < 0.5 ? IDS : [IDS[Math.floor(rnd() * 3)]!];
        for (const id of victims) await c.crash(id);
        for (const n of c.nodes.values()) {
          n.disk.holdSyncs = false;
          n.disk.release();
        }
        expect(leader).toBeDefined();
      }
      await c.elect();
      c.leader()!.core.propose(bytes('last'));
      await c.settle();
      for (let t = 0; t < 30; t++) {
        for (const n of c.nodes.values()) n.core.tick();
        await c.settle();
      }
      record();
      // Every index any replica ever applied is applied by all, with the same command.
      for (const n of c.nodes.values()) {
        for (const [i, v] of applied) expect(n.applied.get(i), `seed ${seed}: ${n.id} lost index ${i}`).toBe(v);
      }
      expect(applied.size).toBeGreaterThan(0);
    }
  });
});
