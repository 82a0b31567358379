/**
 * Peers added, moved and removed while transports run (Transport.setPeer/removePeer): a stranger is refused until
 * it is known, then its redial gets through; a moved peer is reached at its new address; a removed one gets nothing
 * and is reported down.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PeerAuthError } from '../../../src/errors.js';
import { Transport } from '../../../src/raft/transport/index.js';
import { SECRET, heartbeat, waitFor, type Received } from './transport-helpers.js';

interface Peer {
  id: string;
  t: Transport;
  got: Received[];
  errors: Error[];
  states: string[];
}

let peers: Peer[] = [];
afterEach(async () => {
  for (const p of peers) await p.t.close();
  peers = [];
});

/** A transport on any free port knowing `known` (id → port). */
async function start(id: string, known: Record<string, number> = {}): Promise<Peer> {
  const p: Peer = { id, t: undefined as unknown as Transport, got: [], errors: [], states: [] };
  p.t = await Transport.start({
    id,
    clusterId: 'c',
    secret: SECRET,
    listen: { host: '127.0.0.1', port: 0 },
    peers: Object.fromEntries(Object.entries(known).map(([k, port]) => [k, { host: '127.0.0.1', port }])),
    reconnectBaseMs: 10,
    reconnectMaxMs: 100,
    onMessage: (from, groupId, message) => p.got.push({ from, groupId, message }),
    onError: (e) => p.errors.push(e),
    onPeerState: (peer, up) => p.states.push(`${peer} ${up ? 'up' : 'down'}`),
  });
  peers.push(p);
  return p;
}

const at = (p: Peer): { host: string; port: number } => ({ host: '127.0.0.1', port: p.t.port });

describe('raft transport: dynamic peers', () => {
  it('a peer unknown to the acceptor is refused, then connects by its redial once added', async () => {
    const a = await start('a'); // the lower id dials
    const b = await start('b');
    a.t.setPeer('b', at(b));
    expect(a.t.send('b', 'g', heartbeat('a', 'b', 1))).toBe(true);
    await waitFor(() => b.errors.some((e) => e instanceof PeerAuthError), 'b to refuse a stranger');
    expect(b.got).toEqual([]);
    b.t.setPeer('a', at(a));
    await waitFor(() => b.got.length === 1, 'the queued message to arrive');
    expect(b.got[0]!.from).toBe('a');
    expect(a.t.stats('b').connected).toBe(true);
    expect(b.t.peerIds()).toEqual(['a']);
  });

  it('a moved peer is reached at its new address; a removed one gets nothing and is reported down', async () => {
    const b = await start('b');
    const a = await start('a', { b: b.t.port });
    b.t.setPeer('a', at(a));
    a.t.send('b', 'g', heartbeat('a', 'b', 1));
    await waitFor(() => b.got.length === 1, 'the first message');
    // b moves: a new transport for b on another port; a is told.
    const b2 = await start('b', { a: a.t.port });
    a.t.setPeer('b', at(b2));
    await waitFor(() => a.t.stats('b').connected, 'a to reach b at its new address');
    a.t.send('b', 'g', heartbeat('a', 'b', 2));
    await waitFor(() => b2.got.length === 1, 'a message at the new address');
    expect(b.got).toHaveLength(1);
    expect(a.states).toEqual(['b up', 'b down', 'b up']);
    // Removed: the connection closes, the host hears the peer is down, and sends are refused.
    a.t.removePeer('b');
    expect(a.states.at(-1)).toBe('b down');
    expect(a.t.send('b', 'g', heartbeat('a', 'b', 3))).toBe(false);
    expect(a.t.knows('b')).toBe(false);
    await waitFor(() => !b2.t.stats('a').connected, 'b to see the connection closed');
  });
});
