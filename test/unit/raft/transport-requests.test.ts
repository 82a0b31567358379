/**
 * Requests between nodes over the transport's authenticated connections (Transport.request / onRequest): answers,
 * the handler's errors carried back typed, the in-flight bound, pending requests failing at once when the connection
 * drops or the transport closes, and an older peer that knows no request frames.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  ClosedError,
  LimitExceededError,
  NotLeaderError,
  PeerUnavailableError,
  RemoteFailedError,
  TimeoutError,
} from '../../../src/errors.js';
import { FEATURES_GROUP_ID, decodeResponseBody, encodeResponseBody } from '../../../src/raft/transport/codec.js';
import { heartbeat, startCluster, waitFor, type Node, releasePorts } from './transport-helpers.js';

let nodes: Node[] = [];
afterEach(async () => {
  for (const n of nodes) await n.t.close();
  nodes = [];
  releasePorts();
});

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

async function connected(a: Node, b: Node): Promise<void> {
  await waitFor(() => a.t.stats(b.id).connected && b.t.stats(a.id).connected, `${a.id} ⇄ ${b.id} connected`);
}

describe('raft transport requests', () => {
  it('answers a request with the handler’s bytes; a throw comes back as RemoteFailedError with its message', async () => {
    nodes = await startCluster(['a', 'b'], (id) => ({
      ...(id === 'b'
        ? {
            onRequest: (from: string, payload: Uint8Array) => {
              const s = text(payload);
              if (s === 'boom') return Promise.reject(new NotLeaderError('g', undefined, 'a test'));
              return Promise.resolve(bytes(`${from} said ${s}`));
            },
          }
        : {}),
    }));
    const [a, b] = nodes as [Node, Node];
    await connected(a, b);
    expect(text(await a.t.request('b', bytes('hi'), 5000))).toBe('a said hi');
    // Many at once, answered out of order or not, each to its own caller.
    const many = await Promise.all(Array.from({ length: 50 }, (_, i) => a.t.request('b', bytes(`m${i}`), 5000)));
    expect(many.map(text)).toEqual(Array.from({ length: 50 }, (_, i) => `a said m${i}`));
    const err = await a.t.request('b', bytes('boom'), 5000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemoteFailedError);
    expect((err as RemoteFailedError).remoteCode).toBe('NOT_LEADER');
    expect((err as RemoteFailedError).message).toContain('needs the leader');
    // a has no handler: b is told so (not a timeout).
    const none = await b.t.request('a', bytes('x'), 5000).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(PeerUnavailableError);
    expect((none as PeerUnavailableError).reason).toBe('no-handler');
    expect((none as PeerUnavailableError).outcome).toBe('not-applied');
    // The features announcement is the transport's own: no message reached onMessage, nothing was reported.
    expect([...a.got, ...b.got]).toEqual([]);
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('bounds the requests in flight per peer, and fails those pending at once when the peer goes away', async () => {
    const held: (() => void)[] = [];
    nodes = await startCluster(['a', 'b'], (id) => ({
      maxRequestsInFlight: 3,
      ...(id === 'b'
        ? { onRequest: () => new Promise<Uint8Array>((resolve) => held.push(() => resolve(bytes('late')))) }
        : {}),
    }));
    const [a, b] = nodes as [Node, Node];
    await connected(a, b);
    const pending = [1, 2, 3].map(() => a.t.request('b', bytes('wait'), 60_000).catch((e: unknown) => e));
    await expect(a.t.request('b', bytes('one too many'), 60_000)).rejects.toBeInstanceOf(LimitExceededError);
    await waitFor(() => held.length === 3, 'b runs the three requests');
    await b.t.close();
    for (const e of await Promise.all(pending)) {
      expect(e).toBeInstanceOf(PeerUnavailableError);
      expect((e as PeerUnavailableError).reason).toBe('disconnected');
      expect((e as PeerUnavailableError).outcome).toBe('unknown');
    }
    // No connection now: refused at once, nothing sent.
    await waitFor(() => !a.t.stats('b').connected, 'a sees b gone');
    const now = await a.t.request('b', bytes('x'), 60_000).catch((e: unknown) => e);
    expect((now as PeerUnavailableError).reason).toBe('not-connected');
    expect((now as PeerUnavailableError).outcome).toBe('not-applied');
  });

  it('times out with outcome unknown; a late answer is ignored; closing fails what is pending with ClosedError', async () => {
    const held: (() => void)[] = [];
    nodes = await startCluster(['a', 'b'], (id) => ({
      ...(id === 'b'
        ? { onRequest: () => new Promise<Uint8Array>((resolve) => held.push(() => resolve(bytes('late')))) }
        : {}),
    }));
    const [a, b] = nodes as [Node, Node];
    await connected(a, b);
    const t = await a.t.request('b', bytes('slow'), 50).catch((e: unknown) => e);
    expect(t).toBeInstanceOf(TimeoutError);
    expect((t as TimeoutError).outcome).toBe('unknown');
    held.shift()!();
    const open = a.t.request('b', bytes('pending'), 60_000).catch((e: unknown) => e);
    await waitFor(() => held.length === 1, 'b runs the second request');
    await a.t.close();
    expect(await open).toBeInstanceOf(ClosedError);
    expect(a.errors).toEqual([]);
  });

  it('refuses a payload above the frame limit before sending anything', async () => {
    nodes = await startCluster(['a', 'b'], {
      maxFrameBytes: 4096,
      onRequest: (_from, payload) => Promise.resolve(payload.byteLength === 1 ? new Uint8Array(5000) : bytes('ok')),
    });
    const [a, b] = nodes as [Node, Node];
    await connected(a, b);
    await expect(a.t.request('b', new Uint8Array(5000), 5000)).rejects.toBeInstanceOf(LimitExceededError);
    // An answer too large for a frame comes back as an error, not a dropped connection.
    const big = await a.t.request('b', new Uint8Array(1), 5000).catch((e: unknown) => e);
    expect(big).toBeInstanceOf(LimitExceededError);
    expect((big as LimitExceededError).message).toContain('ran the request');
    expect(text(await a.t.request('b', new Uint8Array(10), 5000))).toBe('ok');
    expect(a.t.stats('b').connections).toBe(1);
  });

  it('an older peer (no features announced) is never sent a request frame; the connection stays up', async () => {
    nodes = await startCluster(['a', 'b'], (id) => ({
      legacyWithoutRequests: id === 'b',
      onRequest: () => Promise.resolve(bytes('ok')),
    }));
    const [a, b] = nodes as [Node, Node];
    await connected(a, b);
    // The older node delivers the announcement like any message (to a group that does not exist: a node drops it).
    await waitFor(() => b.got.length === 1, 'the announcement at the older node');
    expect(b.got[0]!.groupId).toBe(FEATURES_GROUP_ID);
    // Its first batch (no announcement) tells a that it serves no requests.
    b.t.send('a', 'g', heartbeat('b', 'a', 1));
    await waitFor(() => a.got.length === 1, 'a message from the older node');
    const err = await a.t.request('b', bytes('x'), 5000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PeerUnavailableError);
    expect((err as PeerUnavailableError).reason).toBe('unsupported');
    expect(a.t.stats('b')).toMatchObject({ connected: true, connections: 1 });
    expect([...a.errors, ...b.errors]).toEqual([]);
  });

  it('response bodies round-trip; an unknown status is a frame error', () => {
    const ok = { id: 7, status: 0 as const, payload: bytes('x') };
    expect(decodeResponseBody(encodeResponseBody(ok))).toEqual(ok);
    const failed = { id: 8, status: 1 as const, code: 'NOT_LEADER', message: 'go elsewhere' };
    expect(decodeResponseBody(encodeResponseBody(failed))).toEqual(failed);
    const body = encodeResponseBody(ok);
    body[1] = 9;
    expect(() => decodeResponseBody(body)).toThrow(/unknown response status 9/);
  });
});
