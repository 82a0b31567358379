/**
 * The transport's client mode on loopback sockets: a process that is not a node (an operator's CLI, a FleetClient)
 * proves the secret, sends requests and gets answers on its own connection, without being a peer. Its Raft messages
 * never reach the node (reported once), it is never dialed, a wrong secret is refused, and at most maxClients are
 * served at once.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  InvalidArgumentError,
  LimitExceededError,
  PeerAuthError,
  PeerUnavailableError,
  TransportFrameError,
} from '../../../src/errors.js';
import { CLIENT_ID_PREFIX, Transport, type TransportOptions } from '../../../src/raft/transport/transport.js';
import { heartbeat, releasePorts, startCluster, startNode, waitFor, SECRET, type Node } from './transport-helpers.js';

let nodes: Node[] = [];
afterEach(async () => {
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/** A node that answers every request with `<from> asked <payload>`. */
async function server(extra: Partial<TransportOptions> = {}): Promise<{ node: Node; asked: string[] }> {
  const asked: string[] = [];
  const [node] = await startCluster(['n1'], {
    onRequest: (from, payload) => {
      asked.push(from);
      return Promise.resolve(enc(`${from} asked ${dec(payload)}`));
    },
    ...extra,
  });
  nodes.push(node!);
  return { node: node!, asked };
}

async function client(id: string, to: Node, extra: Partial<TransportOptions> = {}): Promise<Node> {
  const c = await startNode(id, new Map([['n1', to.t.port]]), { client: true, ...extra });
  nodes.push(c);
  return c;
}

/** Request until the connection is up (the first attempt may find it still in its handshake). */
async function ask(c: Node, payload: string): Promise<string> {
  for (let i = 0; ; i++) {
    try {
      return dec(await c.t.request('n1', enc(payload), 2000));
    } catch (err) {
      if (!(err instanceof PeerUnavailableError) || i > 200) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

describe('raft transport: clients', () => {
  it('serves a client that proves the secret, answers on its connection, and never makes it a peer', async () => {
    const { node, asked } = await server();
    const c = await client(`${CLIENT_ID_PREFIX}op1`, node);
    expect(c.t.port).toBe(0); // a client does not listen: nothing can dial it
    expect(await ask(c, 'hello')).toBe(`${CLIENT_ID_PREFIX}op1 asked hello`);
    expect(asked).toEqual([`${CLIENT_ID_PREFIX}op1`]);
    expect(node.t.clientIds()).toEqual([`${CLIENT_ID_PREFIX}op1`]);
    expect(node.t.peerIds()).toEqual([]);
    expect(node.errors).toEqual([]);
    // The node cannot address it (it is not a peer): no Raft message, no request.
    expect(node.t.send(`${CLIENT_ID_PREFIX}op1`, 'g', heartbeat('n1', `${CLIENT_ID_PREFIX}op1`, 1))).toBe(false);
    await expect(node.t.request(`${CLIENT_ID_PREFIX}op1`, enc('x'), 1000)).rejects.toBeInstanceOf(InvalidArgumentError);
    // Gone with its connection.
    await c.t.close();
    await waitFor(() => node.t.clientIds().length === 0, 'the node to forget the client');
  });

  it("drops a client's Raft messages, reported once, and keeps serving its requests", async () => {
    const { node } = await server();
    const id = `${CLIENT_ID_PREFIX}noisy`;
    const c = await client(id, node);
    expect(await ask(c, 'first')).toContain('first');
    for (let round = 1; round <= 3; round++) {
      c.t.send('n1', 'g', heartbeat(id, 'n1', round));
      // Flushed before the request is written: the node reads the batch first (one ordered stream).
      await new Promise((r) => setImmediate(r));
      expect(await ask(c, `after ${round}`)).toContain(`after ${round}`);
    }
    expect(node.got).toEqual([]);
    expect(node.errors).toHaveLength(1);
    expect(node.errors[0]).toBeInstanceOf(TransportFrameError);
    expect(node.errors[0]!.message).toMatch(/Raft messages from client ~client\.noisy, which may only send requests/);
  });

  it('refuses a client with the wrong secret: both sides report it, and it is served nothing', async () => {
    const { node, asked } = await server();
    const c = await client(`${CLIENT_ID_PREFIX}bad`, node, { secret: 'not the secret, but long enough' });
    await waitFor(() => c.errors.length > 0 && node.errors.length > 0, 'both sides to refuse');
    expect(c.errors[0]).toBeInstanceOf(PeerAuthError);
    expect(node.errors[0]).toBeInstanceOf(PeerAuthError);
    await expect(c.t.request('n1', enc('x'), 500)).rejects.toBeInstanceOf(PeerUnavailableError);
    expect(asked).toEqual([]);
    expect(node.t.clientIds()).toEqual([]);
  });

  it('serves at most maxClients at once (0: none); a client that leaves makes room', async () => {
    const { node } = await server({ maxClients: 1 });
    const a = await client(`${CLIENT_ID_PREFIX}a`, node);
    expect(await ask(a, 'x')).toContain('x');
    const b = await client(`${CLIENT_ID_PREFIX}b`, node);
    await waitFor(() => node.errors.some((e) => e instanceof LimitExceededError), 'the second client refused');
    expect(node.errors.find((e) => e instanceof LimitExceededError)!.message).toMatch(/maxClients/);
    expect(node.t.clientIds()).toEqual([`${CLIENT_ID_PREFIX}a`]);
    await a.t.close();
    // b redials by its backoff and gets in.
    expect(await ask(b, 'y')).toBe(`${CLIENT_ID_PREFIX}b asked y`);

    const none = await startCluster(['n2'], { maxClients: 0, onRequest: () => Promise.resolve(enc('no')) });
    nodes.push(none[0]!);
    const c = await startNode(`${CLIENT_ID_PREFIX}c`, new Map([['n2', none[0]!.t.port]]), { client: true });
    nodes.push(c);
    await waitFor(() => none[0]!.errors.length > 0, 'a client refused by a node with maxClients 0');
    await expect(c.t.request('n2', enc('x'), 500)).rejects.toBeInstanceOf(PeerUnavailableError);
  });

  it('keeps client ids and node ids apart', async () => {
    const base = { clusterId: 'c', secret: SECRET, peers: {}, onMessage: () => undefined };
    await expect(Transport.start({ ...base, id: 'op', client: true })).rejects.toThrow(/must start with "~client\."/);
    await expect(Transport.start({ ...base, id: `${CLIENT_ID_PREFIX}n` })).rejects.toThrow(/reserved for clients/);
    await expect(
      Transport.start({ ...base, id: 'n1', peers: { [`${CLIENT_ID_PREFIX}x`]: { host: '127.0.0.1', port: 1 } } }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    const { node } = await server();
    expect(() => node.t.setPeer(`${CLIENT_ID_PREFIX}x`, { host: '127.0.0.1', port: 1 })).toThrow(/not a client's/);
  });
});
