import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { PeerAuthError, TransportFrameError } from '../../../src/errors.js';
import type { Message } from '../../../src/raft/messages.js';
import { FrameType, encodeBatch, encodeFrame } from '../../../src/raft/transport/codec.js';
import { heartbeat, startCluster, startNode, waitFor, type Node, releasePorts } from './transport-helpers.js';

let nodes: Node[] = [];
afterEach(async () => {
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});

describe('raft transport on loopback', () => {
  it('two nodes exchange the messages of several groups, in order per group, payload bytes intact', async () => {
    nodes = await startCluster(['a', 'b']);
    const [a, b] = nodes as [Node, Node];
    const data = Uint8Array.from({ length: 1000 }, (_, i) => i % 251);
    for (let i = 0; i < 100; i++) {
      for (const g of ['g1', 'g2', 'g3']) {
        a.t.send('b', g, heartbeat('a', 'b', i));
        b.t.send('a', g, {
          type: 'propose',
          from: 'b',
          to: 'a',
          term: 1,
          entries: [{ type: 'normal', data }],
        });
      }
    }
    await waitFor(() => a.got.length === 300 && b.got.length === 300, 'all messages');
    for (const g of ['g1', 'g2', 'g3']) {
      const rounds = b.got.filter((r) => r.groupId === g).map((r) => (r.message as { round: number }).round);
      expect(rounds).toEqual([...Array(100).keys()]);
    }
    expect(b.got.every((r) => r.from === 'a')).toBe(true);
    const p = a.got[0]!.message as Extract<Message, { type: 'propose' }>;
    expect([...p.entries[0]!.data]).toEqual([...data]);
    // Batching: the 300 messages queued in one turn left in very few frames.
    expect(a.t.stats('b').sentFrames).toBeLessThan(10);
    expect(a.t.stats('b')).toMatchObject({ connected: true, connections: 1, droppedFull: 0, sentMessages: 300 });
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('three nodes: every pair talks over one connection', async () => {
    nodes = await startCluster(['n1', 'n2', 'n3']);
    for (const from of nodes) {
      for (const to of nodes) if (to !== from) from.t.send(to.id, `g-${from.id}`, heartbeat(from.id, to.id, 7));
    }
    await waitFor(() => nodes.every((n) => n.got.length === 2), 'a message from each peer');
    for (const n of nodes) {
      expect(n.got.map((r) => r.from).sort()).toEqual(nodes.filter((x) => x !== n).map((x) => x.id));
      for (const r of n.got) expect(r.groupId).toBe(`g-${r.from}`);
      for (const peer of nodes) if (peer !== n) expect(n.t.stats(peer.id).connections).toBe(1);
    }
  });

  it('reconnects after the accepting side is closed and restarted on the same port', async () => {
    nodes = await startCluster(['a', 'b']);
    const [a, b] = nodes as [Node, Node];
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    await waitFor(() => b.got.length === 1, 'the first message');
    const port = b.t.port;
    await b.t.close();
    await waitFor(() => !a.t.stats('b').connected, 'a to see the connection gone');
    // Queued while b is down: kept (bounded) and sent once b is back.
    a.t.send('b', 'g', heartbeat('a', 'b', 2));
    await new Promise((r) => setTimeout(r, 100)); // a few failed redials
    const b2 = await startNode(
      'b',
      new Map([
        ['a', a.t.port],
        ['b', port],
      ]),
    );
    nodes[1] = b2;
    await waitFor(() => b2.got.length >= 1, 'the message queued while b was down');
    expect(b2.got.map((r) => (r.message as { round: number }).round)).toEqual([2]);
    b2.t.send('a', 'g', heartbeat('b', 'a', 3));
    await waitFor(() => a.got.length === 1, 'b2 to reach a over the new connection');
    expect(a.t.stats('b').connections).toBe(2);
  });

  it('an unauthenticated peer gets nothing, its frames are ignored, and the real peer keeps working', async () => {
    nodes = await startCluster(['a', 'b'], { handshakeTimeoutMs: 300 });
    const [a, b] = nodes as [Node, Node];
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    await waitFor(() => b.got.length === 1, 'the real peer');

    // 1. A raw socket that skips the handshake and sends a well-formed batch: ignored, and it is sent no byte.
    const raw = connect(b.t.port, '127.0.0.1');
    const rawGot: Buffer[] = [];
    raw.on('data', (d) => rawGot.push(d));
    await new Promise((r) => raw.once('connect', r));
    raw.write(encodeBatch([{ groupId: 'g', message: heartbeat('a', 'b', 666) }]));

    // 2. A transport claiming to be a, with the wrong secret: refused, and it receives no message.
    const intruder = await startNode(
      'a',
      new Map([
        ['a', 0],
        ['b', b.t.port],
      ]),
      { secret: 'not the secret at all!!' },
    );
    nodes.push(intruder);
    intruder.t.send('b', 'g', heartbeat('a', 'b', 667));
    await waitFor(() => intruder.errors.length > 0 && b.errors.length > 0, 'both sides to refuse');
    expect(b.errors[0]).toBeInstanceOf(PeerAuthError);
    expect(b.errors[0]!.code).toBe('UNAUTHENTICATED');
    expect((b.errors[0] as PeerAuthError).peer).toBe('a');
    expect(intruder.errors[0]).toBeInstanceOf(PeerAuthError);

    // The real peer keeps working both ways, and nothing from the intruders was delivered.
    b.t.send('a', 'g', heartbeat('b', 'a', 2));
    a.t.send('b', 'g', heartbeat('a', 'b', 3));
    await waitFor(() => a.got.length === 1 && b.got.length === 2, 'the real peer after the intruders');
    await new Promise((r) => setTimeout(r, 100)); // several redials by the intruder
    expect(b.got.map((r) => (r.message as { round: number }).round)).toEqual([1, 3]);
    expect(intruder.got).toEqual([]);
    expect(rawGot).toEqual([]);
    expect(b.t.ignoredFrames).toBeGreaterThan(0);
    // Logged once per peer, not once per redial (the raw socket, which never said who it is, timed out).
    await waitFor(() => raw.destroyed || raw.readableEnded, 'the raw socket to be timed out');
    expect(b.errors.filter((e) => e instanceof PeerAuthError && e.peer === 'a')).toHaveLength(1);
    expect(rawGot).toEqual([]);
    raw.destroy();
  });

  it('closes a connection that sends garbage with a typed error, and keeps serving others', async () => {
    nodes = await startCluster(['a', 'b']);
    const [a, b] = nodes as [Node, Node];
    const raw = connect(b.t.port, '127.0.0.1');
    await new Promise((r) => raw.once('connect', r));
    const closed = new Promise((r) => raw.once('close', r));
    raw.write(Buffer.from([0, 0, 0, 2, 77, 1]));
    await closed;
    expect(b.errors[0]).toBeInstanceOf(TransportFrameError);
    // An oversized handshake frame from a stranger is refused before it is buffered.
    const raw2 = connect(b.t.port, '127.0.0.1');
    await new Promise((r) => raw2.once('connect', r));
    const closed2 = new Promise((r) => raw2.once('close', r));
    raw2.write(encodeFrame(FrameType.hello, new Uint8Array(100_000)).subarray(0, 10));
    await closed2;
    // Many garbage connections from one host: reported once, not once per connection.
    for (let i = 0; i < 5; i++) {
      const g = connect(b.t.port, '127.0.0.1');
      await new Promise((r) => g.once('connect', r));
      const closedG = new Promise((r) => g.once('close', r));
      g.write(Buffer.from([0, 0, 0, 0, 4]));
      await closedG;
    }
    expect(b.errors.filter((e) => e instanceof TransportFrameError)).toHaveLength(1);
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    await waitFor(() => b.got.length === 1, 'the real peer');
  });

  it('drops a message whose from is not the authenticated peer, or whose to is not this node, reported once', async () => {
    nodes = await startCluster(['a', 'b']);
    const [a, b] = nodes as [Node, Node];
    a.t.send('b', 'g', heartbeat('c', 'b', 1)); // a speaks in c's name (a forged vote would look the same)
    a.t.send('b', 'g', heartbeat('a', 'c', 2)); // meant for another node
    a.t.send('b', 'g', { type: 'vote', from: 'c', to: 'b', term: 9, index: 0, logTerm: 0, transfer: false });
    a.t.send('b', 'g', heartbeat('a', 'b', 3)); // well addressed: delivered
    await waitFor(() => b.got.length === 1, 'the well-addressed message');
    await new Promise((r) => setTimeout(r, 50)); // nothing else arrives
    expect(b.got.map((r) => (r.message as { round: number }).round)).toEqual([3]);
    expect(b.t.stats('a')).toMatchObject({ droppedMisaddressed: 3, receivedMessages: 4, connections: 1 });
    expect(b.errors).toHaveLength(1);
    expect(b.errors[0]).toBeInstanceOf(TransportFrameError);
    expect((b.errors[0] as TransportFrameError).peer).toBe('a');
    expect(b.errors[0]!.message).toMatch(/a message from "c" on the connection of a to b\); the message was dropped/);
    // The connection stays up.
    a.t.send('b', 'g', heartbeat('a', 'b', 4));
    await waitFor(() => b.got.length === 2, 'a later message');
    expect(b.t.stats('a').connections).toBe(1);
  });

  it('drops messages when a peer queue is full, counts them, and never grows past the bound', async () => {
    // b is never started: a's queue to it fills.
    nodes = [
      await startNode(
        'a',
        new Map([
          ['a', 0],
          ['b', 1],
        ]),
        { maxQueuedMessages: 10, maxQueuedBytes: 1 << 20 },
      ),
    ];
    const a = nodes[0]!;
    const sent = Array.from({ length: 25 }, (_, i) => a.t.send('b', 'g', heartbeat('a', 'b', i)));
    expect(sent.filter(Boolean)).toHaveLength(10);
    expect(a.t.stats('b')).toMatchObject({ queuedMessages: 10, droppedFull: 15, connected: false });
  });

  it('streams a large snapshot without delaying heartbeats by more than one chunk', async () => {
    nodes = await startCluster(['a', 'b']);
    const [a, b] = nodes as [Node, Node];
    const CHUNK = 256 * 1024;
    const CHUNKS = 40;
    const meta = { index: 10, term: 1, membership: { voters: ['a', 'b'], learners: [] } };
    for (let i = 0; i < CHUNKS; i++) {
      a.t.send('b', 'big', {
        type: 'snapshot',
        from: 'a',
        to: 'b',
        term: 1,
        meta,
        offset: i * CHUNK,
        totalBytes: CHUNKS * CHUNK,
        data: new Uint8Array(CHUNK),
      });
    }
    // One heartbeat per event-loop turn while the snapshot streams; remember how many chunks had left a's queue.
    const chunksTakenAtSend: number[] = [];
    let round = 0;
    const lastChunkIndex = (): number => {
      const chunks = b.got.filter((r) => r.message.type === 'snapshot');
      return chunks.length === 0 ? -1 : (chunks.at(-1)!.message as { offset: number }).offset / CHUNK;
    };
    const arrivedAfterChunk = new Map<number, number>();
    const origOnMessage = b.got.push.bind(b.got);
    b.got.push = (...rs) => {
      for (const r of rs) {
        if (r.message.type === 'heartbeat') arrivedAfterChunk.set(r.message.round, lastChunkIndex());
        origOnMessage(r);
      }
      return b.got.length;
    };
    while (lastChunkIndex() < CHUNKS - 1) {
      chunksTakenAtSend.push(a.t.stats('b').sentSnapshotChunks);
      a.t.send('b', 'g2', heartbeat('a', 'b', round++));
      await new Promise((r) => setImmediate(r));
    }
    await waitFor(() => arrivedAfterChunk.size === round, 'every heartbeat');
    // Ordering: heartbeat r was queued when chunks [0, taken) had left the queue; at most one more chunk (the one
    // sharing its batch, or being written) may arrive before it.
    for (let r = 0; r < round; r++) expect(arrivedAfterChunk.get(r)!).toBeLessThanOrEqual(chunksTakenAtSend[r]!);
    // And the heartbeats really interleaved with the stream.
    const midStream = [...arrivedAfterChunk.values()].filter((c) => c >= 0 && c < CHUNKS - 1).length;
    expect(midStream).toBeGreaterThan(5);
    expect(b.got.filter((r) => r.message.type === 'snapshot')).toHaveLength(CHUNKS);
  });
});
