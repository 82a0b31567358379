/**
 * The handshake carries each node's incarnation and what it last knew of the other (docs/raft.md, "A node that
 * lost its data"), and no message flows before the host has recorded the peer's identity.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { PeerIdentity } from '../../../src/raft/transport/index.js';
import { heartbeat, releasePorts, startCluster, waitFor, type Node } from './transport-helpers.js';

let nodes: Node[] = [];
afterEach(async () => {
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});

const inc = (b: number): Uint8Array => new Uint8Array(16).fill(b);

describe('raft transport incarnations', () => {
  it('each side learns the other’s incarnation and what the other knew of it (or that it never saw it)', async () => {
    const seen: { a: [string, PeerIdentity][]; b: [string, PeerIdentity][] } = { a: [], b: [] };
    // a knew b as incarnation 9 (b has since lost its data: it is 2 now); b never saw a.
    nodes = await startCluster(['a', 'b'], (id) => ({
      incarnation: inc(id === 'a' ? 1 : 2),
      knownIncarnation: (peer: string) => (id === 'a' && peer === 'b' ? inc(9) : undefined),
      onPeerIdentity: (peer: string, identity: PeerIdentity) => {
        seen[id as 'a' | 'b'].push([peer, identity]);
      },
    }));
    await waitFor(() => seen.a.length === 1 && seen.b.length === 1, 'both handshakes');
    expect(seen.a).toEqual([['b', { incarnation: inc(2), knewMeAs: undefined }]]);
    expect(seen.b).toEqual([['a', { incarnation: inc(1), knewMeAs: inc(9) }]]);
  });

  it('delivers nothing of a connection before onPeerIdentity has resolved; a rejection closes it', async () => {
    let release: () => void = () => undefined;
    const recorded = new Promise<void>((resolve) => (release = resolve));
    let refuse = true;
    nodes = await startCluster(['a', 'b'], (id) => ({
      onPeerIdentity: () => {
        if (id !== 'b') return undefined;
        if (refuse) {
          refuse = false;
          return Promise.reject(new Error('disk full'));
        }
        return recorded;
      },
    }));
    const [a, b] = nodes as [Node, Node];
    await waitFor(() => b.errors.length > 0, 'the refused identity to be reported');
    expect(b.errors[0]!.message).toMatch(/onPeerIdentity.*disk full/s);
    await waitFor(() => a.t.stats('b').connections >= 2, 'the redial to authenticate');
    // Sent only now: a message sent earlier may leave on the refused connection and be lost with it (as TCP may
    // lose it; Raft retransmits), which is not what this test is about.
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    b.t.send('a', 'g', heartbeat('b', 'a', 2));
    await new Promise((r) => setTimeout(r, 50));
    // a sees the link up, but b has not recorded a yet: b neither delivers a's message nor sends its own.
    expect(b.got).toEqual([]);
    expect(a.got).toEqual([]);
    release();
    await waitFor(() => b.got.length === 1 && a.got.length === 1, 'both messages once recorded');
  });
});
