/**
 * A node restarted with its data directory deleted (issue 13 item 6, docs/raft.md "A node that lost its data"):
 * its peers tell it, it reports the loss, it grants no vote before it has caught up with a leader, and the group
 * keeps working meanwhile. Three nodes in this process over loopback TCP.
 */
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RaftDataLostError, startRaftNode, type RaftGroup, type RaftNode } from '../../src/raft/api.js';
import type { Message } from '../../src/raft/messages.js';
import type { KvOutput } from '../../src/sim/linearizability-models.js';
import { kvStateMachine, type KvCommand, type KvQuery } from '../../src/sim/raft-kv.js';
import { allocatePorts } from '../harness/ports.js';
import { releasePort } from '../harness/processes.js';

const SECRET = 'a test secret of enough bytes';
const IDS = ['n1', 'n2', 'n3'];
const TICK_MS = 20;
const ELECTION_TICKS = 10;
type Kv = RaftGroup<KvCommand, KvQuery, KvOutput, string | null>;

async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  for (let waited = 0; waited < timeoutMs && !cond(); waited += 10) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

interface Sent {
  readonly message: Message;
  /** The replica's vote hold when it sent the message. */
  readonly held: string | undefined;
}

const dirs: Record<string, string> = {};
const ports: Record<string, number> = {};
const nodes = new Map<string, RaftNode>();
const groups = new Map<string, Kv>();

afterEach(async () => {
  for (const n of nodes.values()) await n.close();
  nodes.clear();
  groups.clear();
  for (const d of Object.values(dirs)) await rm(d, { recursive: true, force: true });
  for (const p of Object.values(ports)) releasePort(p);
});

/** Start node `id` and open the kv group on it; `sent` records what it sends, with its hold at that moment. */
async function start(id: string, sent?: Sent[]): Promise<{ node: RaftNode; group: Kv; errors: unknown[] }> {
  const holder: { group?: Kv } = {};
  const node = await startRaftNode({
    id,
    dataDir: dirs[id]!,
    listen: `127.0.0.1:${ports[id]}`,
    peers: Object.fromEntries(IDS.filter((p) => p !== id).map((p) => [p, `127.0.0.1:${ports[p]}`])),
    secret: SECRET,
    tickMs: TICK_MS,
    electionTicks: ELECTION_TICKS,
    io: {
      send: (_to, _group, message, deliver) => {
        sent?.push({ message, held: holder.group?.status().votesHeld });
        deliver();
      },
    },
  });
  const errors: unknown[] = [];
  node.on('error', (e) => errors.push(e.error));
  const group: Kv = node.openGroup('kv', { members: IDS, stateMachine: kvStateMachine() });
  holder.group = group;
  nodes.set(id, node);
  groups.set(id, group);
  return { node, group, errors };
}

async function stop(id: string): Promise<void> {
  await nodes.get(id)!.close();
  nodes.delete(id);
  groups.delete(id);
}

/** Votes and pre-votes a replica granted, and the elections it started. */
function voted(sent: readonly Sent[]): Sent[] {
  return sent.filter(
    (s) =>
      ((s.message.type === 'voteResponse' || s.message.type === 'preVoteResponse') && !s.message.reject) ||
      s.message.type === 'vote' ||
      s.message.type === 'preVote',
  );
}

describe('a raft node restarted with its data directory deleted', () => {
  it('reports the loss, does not vote before it has caught up, and the group keeps working', async () => {
    const allocated = await allocatePorts(IDS.length);
    for (const [i, id] of IDS.entries()) {
      dirs[id] = await mkdtemp(join(tmpdir(), `raft-wipe-${id}-`));
      ports[id] = allocated[i]!;
    }
    // A new cluster: every node's data is new, every peer says "never seen you", they elect a leader as usual.
    const first = await Promise.all(IDS.map((id) => start(id)));
    await first[0]!.group.ready({ timeoutMs: 10_000 });
    for (let i = 0; i < 10; i++) await first[i % 3]!.group.command({ op: 'append', key: 'k', value: String(i) });
    expect(first.flatMap((f) => f.errors)).toEqual([]);
    expect(first.map((f) => f.group.status().votesHeld)).toEqual([undefined, undefined, undefined]);

    const leader = first[0]!.group.status().leader!;
    const [wiped, other] = IDS.filter((id) => id !== leader) as [string, string];
    // Stop a follower and delete its data directory; stop the leader too, so that only `other` can answer it.
    await stop(wiped);
    expect(await readdir(dirs[wiped]!)).toContain('node-identity');
    await rm(dirs[wiped]!, { recursive: true, force: true });
    await mkdir(dirs[wiped]!);
    await stop(leader);

    const sent: Sent[] = [];
    const w = await start(wiped, sent);
    await until(() => w.errors.some((e) => e instanceof RaftDataLostError), 'the data loss to be reported');
    const lost = w.errors.find((e) => e instanceof RaftDataLostError) as RaftDataLostError;
    expect(lost.peer).toBe(other);
    expect(lost.code).toBe('DATA_LOST');
    expect(lost.message).toMatch(/lost its data.*rejoins without voting/s);
    expect(w.group.status().votesHeld).toBe('leader-seen');
    // `other` would need the wiped node's vote to win: several election timeouts pass without a leader.
    await new Promise((r) => setTimeout(r, 6 * ELECTION_TICKS * TICK_MS));
    expect(groups.get(other)!.status().role).not.toBe('leader');
    expect(w.group.status().leader).toBeUndefined();
    expect(voted(sent)).toEqual([]);

    // The old leader comes back: it and `other` elect a leader, which catches the wiped node up.
    const back = await start(leader);
    await back.group.ready({ timeoutMs: 10_000 });
    const live = [back.group, groups.get(other)!];
    const serving = live.find((g) => g.status().role === 'leader')!;
    await serving.command({ op: 'append', key: 'k', value: 'x' });
    await until(() => w.group.status().applied >= serving.status().committed, 'the wiped node to catch up');
    expect(await w.group.query({ op: 'get', key: 'k' }, { consistency: 'stale' })).toBe('0123456789x');
    // Still held for one more maximum election timeout after catching up, then released.
    await until(() => w.group.status().votesHeld === undefined, 'the hold to end');
    expect(voted(sent).filter((s) => s.held !== undefined)).toEqual([]);
    expect(back.errors.filter((e) => e instanceof RaftDataLostError)).toEqual([]);

    // Released, it votes again: with the leader gone, it and the remaining node elect one of them.
    const leaderNow = serving.status().node;
    await stop(leaderNow);
    const remaining = [wiped, IDS.find((id) => id !== wiped && id !== leaderNow)!];
    await until(
      () => remaining.some((id) => groups.get(id)!.status().role === 'leader'),
      'a leader among the wiped node and the other one',
    );
    await groups.get(wiped)!.command({ op: 'append', key: 'k', value: 'y' });
    expect(await groups.get(wiped)!.query({ op: 'get', key: 'k' })).toBe('0123456789xy');

    // Restarted again (data kept): not rejoining any more, votes are not held.
    await stop(wiped);
    const again = await start(wiped);
    expect(again.group.status().votesHeld).toBeUndefined();
    await again.group.ready({ timeoutMs: 10_000 });
    expect(again.errors.filter((e) => e instanceof RaftDataLostError)).toEqual([]);
  }, 60_000);

  it('with the leader up all along, the leader replicates to the wiped follower from the start', async () => {
    const allocated = await allocatePorts(IDS.length);
    for (const [i, id] of IDS.entries()) {
      dirs[id] = await mkdtemp(join(tmpdir(), `raft-wipe-${id}-`));
      ports[id] = allocated[i]!;
    }
    const first = await Promise.all(IDS.map((id) => start(id)));
    await first[0]!.group.ready({ timeoutMs: 10_000 });
    for (let i = 0; i < 5; i++) await first[0]!.group.command({ op: 'append', key: 'k', value: String(i) });
    const leader = first[0]!.group.status().leader!;
    const wiped = IDS.find((id) => id !== leader)!;
    await stop(wiped);
    await rm(dirs[wiped]!, { recursive: true, force: true });
    await mkdir(dirs[wiped]!);
    const sent: Sent[] = [];
    const w = await start(wiped, sent);
    await until(() => w.errors.some((e) => e instanceof RaftDataLostError), 'the data loss to be reported');
    // The group goes on meanwhile, and the leader (which still believed the follower had its log) catches it up.
    await groups.get(leader)!.command({ op: 'append', key: 'k', value: 'x' });
    await until(() => w.group.status().applied >= groups.get(leader)!.status().committed, 'the wiped node to catch up');
    expect(await w.group.query({ op: 'get', key: 'k' }, { consistency: 'stale' })).toBe('01234x');
    await until(() => w.group.status().votesHeld === undefined, 'the hold to end');
    expect(voted(sent).filter((s) => s.held !== undefined)).toEqual([]);
    expect(groups.get(leader)!.status().role).toBe('leader');
  }, 60_000);
});
