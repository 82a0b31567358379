/**
 * The node's identity file (durable through the Disk, crash-safe, corruption refused) and the vote guard's rules:
 * a new data directory votes once a majority of its peers answered; a peer that knew another incarnation means the
 * data was lost (reported once, every replica held, durable until every replica is past its hold).
 */
import { describe, expect, it } from 'vitest';
import { CorruptLogError, RaftDataLostError, type RebalancerError } from '../../../src/errors.js';
import { Core, MemoryStorage } from '../../../src/raft/index.js';
import { IDENTITY_FILE, NodeIdentity } from '../../../src/raft/node/identity.js';
import { VoteGuard } from '../../../src/raft/node/vote-guard.js';
import { SimDisk } from '../../../src/raft/wal/disk.js';
import { seeded } from './network.js';

const inc = (b: number): Uint8Array => new Uint8Array(16).fill(b);
const random = (b: number) => (): Uint8Array => inc(b);

function core(): Core {
  return new Core({
    id: 'me',
    storage: new MemoryStorage({ voters: ['me', 'p1', 'p2', 'p3', 'p4'], learners: [] }),
    random: seeded(3),
    electionTicks: 10,
    heartbeatTicks: 1,
  });
}

describe('raft node identity file', () => {
  it('is made once, durably, and read back; peers and the rejoining flag survive a crash', async () => {
    const disk = new SimDisk(seeded(1));
    const a = await NodeIdentity.open(disk.view(), random(1));
    expect(a.created).toBe(true);
    await a.recordPeer('p1', inc(7));
    await a.setRejoining(true);
    disk.crash();
    const b = await NodeIdentity.open(disk.view(), random(2));
    expect(b.created).toBe(false);
    expect(b.incarnation).toEqual(inc(1));
    expect(b.known('p1')).toEqual(inc(7));
    expect(b.known('p2')).toBeUndefined();
    expect(b.rejoining).toBe(true);
    expect(await disk.list()).toEqual([IDENTITY_FILE]);
  });

  it('a damaged file is refused, not replaced', async () => {
    const disk = new SimDisk(seeded(1));
    await NodeIdentity.open(disk.view(), random(1));
    disk.corrupt(IDENTITY_FILE, 12);
    await expect(NodeIdentity.open(disk.view(), random(2))).rejects.toThrow(CorruptLogError);
  });
});

describe('raft vote guard', () => {
  async function guard(peers: string[], b = 1, disk = new SimDisk(seeded(1))) {
    const identity = await NodeIdentity.open(disk.view(), random(b));
    const reports: RebalancerError[] = [];
    const lostPeers: string[] = [];
    const g = new VoteGuard({
      nodeId: 'me',
      identity,
      peers,
      report: (e) => reports.push(e),
      peerLostData: (p) => lostPeers.push(p),
    });
    return { g, identity, reports, disk, lostPeers };
  }

  it('new data: votes held until a majority of the peers answered (3 of 4), all saying "never seen"', async () => {
    const { g, reports, lostPeers } = await guard(['p1', 'p2', 'p3', 'p4']);
    const c = core();
    g.attach(c);
    expect(g.peersNeeded).toBe(3);
    expect(c.votesHeld()).toBe('released');
    await g.onPeerIdentity('p1', { incarnation: inc(11), knewMeAs: undefined });
    await g.onPeerIdentity('p2', { incarnation: inc(12), knewMeAs: undefined });
    await g.onPeerIdentity('p1', { incarnation: inc(11), knewMeAs: inc(1) }); // a reconnection counts once
    expect(c.votesHeld()).toBe('released');
    await g.onPeerIdentity('p3', { incarnation: inc(13), knewMeAs: undefined });
    expect(c.votesHeld()).toBeUndefined();
    expect(reports).toEqual([]);
    expect(lostPeers).toEqual([]);
    // p2 comes back under another incarnation: it lost its data (our leaders must forget its logs).
    await g.onPeerIdentity('p2', { incarnation: inc(22), knewMeAs: undefined });
    expect(lostPeers).toEqual(['p2']);
    expect(c.votesHeld()).toBeUndefined();
    // A group opened later is not held.
    const later = core();
    g.attach(later);
    expect(later.votesHeld()).toBeUndefined();
  });

  it('dynamic peers, new data: the majority is of the peers known when counted; once reached it stays', async () => {
    const { g } = await guard(['p1']);
    const c = core();
    g.attach(c);
    expect(c.votesHeld()).toBe('released');
    // Peers added before the majority is reached raise it: 2 of 3.
    g.addPeer('p2');
    g.addPeer('p3');
    await g.onPeerIdentity('p1', { incarnation: inc(11), knewMeAs: undefined });
    expect(g.peersNeeded).toBe(2);
    expect(c.votesHeld()).toBe('released');
    // Removed peers lower it again: {p1, p2} needs both, {p1} only p1.
    g.removePeer('p3');
    expect(c.votesHeld()).toBe('released');
    g.removePeer('p2');
    expect(c.votesHeld()).toBeUndefined();
    // Released for this run: a peer added now holds nothing, nor does a replica opened later.
    g.addPeer('p4');
    g.addPeer('p5');
    expect(g.awaitingPeers).toBe(false);
    const later = core();
    g.attach(later);
    expect(later.votesHeld()).toBeUndefined();
  });

  it('dynamic peers, new data: no peers ever votes at once; peers all removed before answering wait for one', async () => {
    const lonely = await guard([]);
    const c = core();
    lonely.g.attach(c);
    expect(c.votesHeld()).toBeUndefined();
    const { g } = await guard([], 2);
    g.addPeer('p1');
    const held = core();
    g.attach(held);
    expect(held.votesHeld()).toBe('released');
    g.removePeer('p1');
    expect(g.peersNeeded).toBe(1);
    expect(held.votesHeld()).toBe('released');
    g.addPeer('p2');
    await g.onPeerIdentity('p2', { incarnation: inc(12), knewMeAs: undefined });
    expect(held.votesHeld()).toBeUndefined();
  });

  it('a peer that knew another incarnation: reported once, every replica held, durable until all are past it', async () => {
    const { g, identity, reports, disk } = await guard(['p1', 'p2']);
    const c = core();
    g.attach(c);
    await g.onPeerIdentity('p1', { incarnation: inc(11), knewMeAs: inc(9) });
    await g.onPeerIdentity('p2', { incarnation: inc(12), knewMeAs: inc(9) });
    expect(reports).toHaveLength(1);
    expect(reports[0]).toBeInstanceOf(RaftDataLostError);
    expect(c.votesHeld()).toBe('leader-seen');
    expect(identity.rejoining).toBe(true);
    expect(identity.known('p2')).toEqual(inc(12));
    // A restart while rejoining holds every replica again.
    const after = await guard(['p1', 'p2'], 5, disk);
    expect(after.identity.created).toBe(false);
    const c2 = core();
    after.g.attach(c2);
    expect(c2.votesHeld()).toBe('leader-seen');
    // Ticks do not end it while a replica holds.
    g.tick();
    await new Promise((r) => setImmediate(r));
    expect(identity.rejoining).toBe(true);
  });
});
