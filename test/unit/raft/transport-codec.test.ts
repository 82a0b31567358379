import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LimitExceededError, PeerAuthError, TransportFrameError } from '../../../src/errors.js';
import type { Message } from '../../../src/raft/messages.js';
import {
  FrameDecoder,
  FrameType,
  Reader,
  Writer,
  decodeBatch,
  encodeBatch,
  encodeEnvelope,
  encodeFrame,
  type Envelope,
} from '../../../src/raft/transport/codec.js';
import {
  PROTOCOL_VERSION,
  decodeAuth,
  decodeHello,
  decodeHelloAck,
  encodeAuth,
  encodeHello,
  encodeHelloAck,
} from '../../../src/raft/transport/handshake.js';
import { PeerQueue } from '../../../src/raft/transport/peer-queue.js';

const id = fc.string({ minLength: 1, maxLength: 12 });
const n = fc.oneof(fc.nat(1000), fc.constant(Number.MAX_SAFE_INTEGER), fc.nat());
const bytes = fc.uint8Array({ maxLength: 300 });
const entryType = fc.constantFrom('normal' as const, 'membership' as const);
const membership = fc.record({ voters: fc.array(id, { maxLength: 5 }), learners: fc.array(id, { maxLength: 3 }) });

const message: fc.Arbitrary<Message> = fc.record({ from: id, to: id, term: n }).chain((base) =>
  fc
    .oneof(
      fc.record({
        type: fc.constant('append' as const),
        index: n,
        logTerm: n,
        commit: n,
        entries: fc.array(fc.record({ term: n, index: n, type: entryType, data: bytes }), { maxLength: 5 }),
      }),
      fc.record({
        type: fc.constant('appendResponse' as const),
        index: n,
        reject: fc.boolean(),
        hintIndex: n,
        hintTerm: n,
      }),
      fc.record({
        type: fc.constantFrom('vote' as const, 'preVote' as const),
        index: n,
        logTerm: n,
        transfer: fc.boolean(),
      }),
      fc.record({ type: fc.constantFrom('voteResponse' as const, 'preVoteResponse' as const), reject: fc.boolean() }),
      fc.record({ type: fc.constant('heartbeat' as const), commit: n, round: n, quiesce: fc.boolean() }),
      fc.record({ type: fc.constant('heartbeatResponse' as const), round: n }),
      fc.record({
        type: fc.constant('snapshot' as const),
        meta: fc.record({ index: n, term: n, membership }),
        offset: n,
        totalBytes: n,
        data: bytes,
      }),
      fc.record({ type: fc.constant('snapshotResponse' as const), index: n, offset: n, reject: fc.boolean() }),
      fc.record({
        type: fc.constant('propose' as const),
        entries: fc.array(fc.record({ type: entryType, data: bytes }), { maxLength: 4 }),
      }),
      fc.record({ type: fc.constant('readIndex' as const), ctx: fc.string() }),
      fc.record({ type: fc.constant('readIndexResponse' as const), ctx: fc.string(), index: n }),
      fc.record({ type: fc.constant('timeoutNow' as const) }),
      fc.record({ type: fc.constant('transfer' as const), target: id }),
    )
    .map((rest) => ({ ...base, ...rest }) as Message),
);
const envelope: fc.Arbitrary<Envelope> = fc.record({ groupId: fc.string({ maxLength: 20 }), message });

/** Plain objects with Uint8Array payloads as arrays, for a structural comparison. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: [...v] };
  if (Array.isArray(v)) return v.map(plain);
  if (v !== null && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}

function decodeAll(chunks: Uint8Array[], max?: number): Envelope[] {
  const d = new FrameDecoder(max);
  const out: Envelope[] = [];
  for (const c of chunks) for (const f of d.push(c)) out.push(...decodeBatch(f.body));
  expect(d.buffered).toBe(0);
  return out;
}

describe('raft transport codec', () => {
  it('round-trips every message type, payload bytes included', () => {
    fc.assert(
      fc.property(fc.array(envelope, { maxLength: 8 }), (envs) => {
        const frame = encodeBatch(envs);
        const back = decodeAll([frame]);
        expect(plain(back)).toEqual(plain(envs));
        for (const e of back) {
          if (e.message.type === 'append') for (const x of e.message.entries) expect(x.data).toBeInstanceOf(Uint8Array);
          if (e.message.type === 'snapshot') expect(e.message.data).toBeInstanceOf(Uint8Array);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('round-trips strings of any characters and length, the same ones read again (ids are kept after a first read)', () => {
    const str = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 20 }),
      fc.string({ maxLength: 200 }),
      fc.constantFrom('g-1:2.AbCdEfGh', 'n1', 'é', 'ascii then é', ''),
    );
    fc.assert(
      fc.property(fc.array(str, { minLength: 1, maxLength: 8 }), (strs) => {
        const w = new Writer(8);
        for (const s of [...strs, ...strs]) w.str(s);
        const r = new Reader(new Uint8Array(w.view()));
        for (const s of [...strs, ...strs]) expect(r.str()).toBe(s);
        r.end();
      }),
    );
    // Bytes that are not UTF-8 read as the decoder reads them, the first time and the next.
    const bad = new Uint8Array([3, 0x61, 0xff, 0x62]);
    const first = new Reader(bad).str();
    expect(first).toBe(Buffer.from([0x61, 0xff, 0x62]).toString('utf8'));
    expect(new Reader(bad).str()).toBe(first);
  });

  it('carries payloads as raw bytes (the payload appears verbatim in the frame)', () => {
    const data = new Uint8Array(256).map((_, i) => 255 - i);
    const frame = encodeBatch([
      { groupId: 'g', message: { type: 'propose', from: 'a', to: 'b', term: 1, entries: [{ type: 'normal', data }] } },
    ]);
    expect(Buffer.from(frame).indexOf(Buffer.from(data))).toBeGreaterThan(0);
    expect(frame.byteLength).toBeLessThan(data.byteLength + 40);
  });

  it('reassembles frames split anywhere and splits chunks holding many frames', () => {
    fc.assert(
      fc.property(
        fc.array(fc.array(envelope, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 5 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (batches, cutSeeds) => {
          const stream = Buffer.concat(batches.map((b) => encodeBatch(b)));
          const cuts = [...new Set(cutSeeds.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const chunks: Uint8Array[] = [];
          let at = 0;
          for (const c of [...cuts, stream.length]) {
            chunks.push(stream.subarray(at, c));
            at = c;
          }
          expect(plain(decodeAll(chunks))).toEqual(plain(batches.flat()));
          // Byte by byte too.
          const bytewise = [...stream].map((b) => Uint8Array.of(b));
          expect(plain(decodeAll(bytewise))).toEqual(plain(batches.flat()));
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses garbage with a typed error and then refuses the stream, never crashing', () => {
    const lengthZero = Buffer.from([0, 0, 0, 0, 4]);
    const huge = Buffer.from([0x7f, 0xff, 0xff, 0xff, 4]);
    const unknownType = Buffer.from([0, 0, 0, 1, 99]);
    for (const bad of [lengthZero, huge, unknownType]) {
      const d = new FrameDecoder(1 << 20);
      expect(() => d.push(bad)).toThrow(TransportFrameError);
      expect(() => d.push(encodeBatch([]))).toThrow(TransportFrameError);
    }
    // A well-framed batch whose body is garbage: decodeBatch refuses it.
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (junk) => {
        try {
          decodeBatch(junk);
        } catch (e) {
          expect(e).toBeInstanceOf(TransportFrameError);
        }
      }),
      { numRuns: 500 },
    );
    // Truncating a valid body anywhere is refused.
    const body = encodeBatch([
      {
        groupId: 'g',
        message: { type: 'heartbeat', from: 'a', to: 'b', term: 3, commit: 2, round: 1, quiesce: false },
      },
    ]).subarray(5);
    for (let i = 0; i < body.length; i++) expect(() => decodeBatch(body.subarray(0, i))).toThrow(TransportFrameError);
    expect(() => decodeBatch(Buffer.concat([body, Buffer.from([0])]))).toThrow(TransportFrameError);
  });

  it('refuses to build a frame above maxFrameBytes, and the decoder refuses to receive one', () => {
    const big = new Uint8Array(10_000);
    const env: Envelope = {
      groupId: 'g',
      message: { type: 'propose', from: 'a', to: 'b', term: 1, entries: [{ type: 'normal', data: big }] },
    };
    expect(() => encodeBatch([env], 8192)).toThrow(LimitExceededError);
    const frame = encodeBatch([env]);
    expect(() => new FrameDecoder(8192).push(frame.subarray(0, 5))).toThrow(TransportFrameError);
    expect(plain(decodeAll([frame], 16_384))).toEqual(plain([env]));
    expect(encodeFrame(FrameType.auth, new Uint8Array(3)).readUInt32BE(0)).toBe(4);
  });
});

describe('raft transport per-peer queue', () => {
  const small = (i: number): Uint8Array =>
    encodeEnvelope({
      groupId: 'g',
      message: { type: 'heartbeat', from: 'a', to: 'b', term: 1, commit: i, round: i, quiesce: false },
    });
  const chunk = (i: number): Uint8Array =>
    encodeEnvelope({
      groupId: 'g',
      message: {
        type: 'snapshot',
        from: 'a',
        to: 'b',
        term: 1,
        meta: { index: 5, term: 1, membership: { voters: ['a', 'b'], learners: [] } },
        offset: i * 1000,
        totalBytes: 10_000,
        data: new Uint8Array(1000),
      },
    });

  it('drops past the message bound and the byte bound, and counts the drops', () => {
    const q = new PeerQueue({ maxQueuedMessages: 3, maxQueuedBytes: 1 << 20, maxFrameBytes: 1 << 20 });
    expect([0, 1, 2, 3, 4].map((i) => q.push(small(i), false))).toEqual([true, true, true, false, false]);
    expect(q.stats()).toMatchObject({ queuedMessages: 3, droppedFull: 2 });
    const qb = new PeerQueue({ maxQueuedMessages: 100, maxQueuedBytes: 2500, maxFrameBytes: 1 << 20 });
    expect([0, 1, 2].map((i) => qb.push(chunk(i), true))).toEqual([true, true, false]);
    expect(qb.stats().droppedFull).toBe(1);
    expect(qb.stats().queuedBytes).toBe(chunk(0).byteLength + chunk(1).byteLength);
    const qf = new PeerQueue({ maxQueuedMessages: 100, maxQueuedBytes: 1 << 20, maxFrameBytes: 500 });
    expect(qf.push(chunk(0), true)).toBe(false);
    expect(qf.stats().droppedOversized).toBe(1);
  });

  it('sends small messages first and at most one snapshot chunk per batch, within the frame size', () => {
    const q = new PeerQueue({ maxQueuedMessages: 1000, maxQueuedBytes: 1 << 20, maxFrameBytes: 4096 });
    for (let i = 0; i < 5; i++) q.push(chunk(i), true);
    for (let i = 0; i < 300; i++) q.push(small(i), false);
    const batches = [];
    for (let b = q.nextBatch(); b; b = q.nextBatch()) batches.push(b);
    // Small messages fill frames before any chunk; each batch has at most one chunk; every frame fits.
    for (const b of batches) expect(b.bytes + 9).toBeLessThanOrEqual(4096);
    const firstBulk = batches.findIndex((b) => b.bulk);
    const smallCount = batches.slice(0, firstBulk + 1).reduce((s, b) => s + b.parts.length - (b.bulk ? 1 : 0), 0);
    expect(smallCount).toBe(300);
    expect(batches.filter((b) => b.bulk)).toHaveLength(5);
    expect(q.stats()).toMatchObject({ queuedMessages: 0, queuedBytes: 0 });
  });
});

describe('raft transport handshake frames (version 2: incarnations)', () => {
  const nonce32 = fc.uint8Array({ minLength: 32, maxLength: 32 });
  const inc = fc.uint8Array({ minLength: 16, maxLength: 16 });
  const known = fc.option(inc, { nil: undefined });

  it('hello and helloAck round-trip, with or without a known incarnation', () => {
    fc.assert(
      fc.property(id, id, id, nonce32, inc, known, (clusterId, from, to, nonce, incarnation, knownIncarnation) => {
        const h = { clusterId, from, to, nonce, incarnation, knownIncarnation };
        expect(decodeHello(encodeHello(h), 'x')).toEqual(h);
      }),
    );
    fc.assert(
      fc.property(nonce32, inc, known, nonce32, (nonce, incarnation, knownIncarnation, mac) => {
        const a = { nonce, incarnation, knownIncarnation, mac };
        expect(decodeHelloAck(encodeHelloAck(a))).toEqual(a);
      }),
    );
    const mac = new Uint8Array(32).fill(7);
    expect(decodeAuth(encodeAuth(mac))).toEqual(mac);
  });

  it('is strict: another version, a wrong-sized field, a byte left over are refused', () => {
    const h = {
      clusterId: 'c',
      from: 'a',
      to: 'b',
      nonce: new Uint8Array(32),
      incarnation: new Uint8Array(16).fill(1),
      knownIncarnation: undefined,
    };
    const good = Buffer.from(encodeHello(h));
    expect(good[0]).toBe(PROTOCOL_VERSION);
    const v1 = Buffer.from(good);
    v1[0] = 1;
    expect(() => decodeHello(v1, 'peer a')).toThrow(PeerAuthError);
    expect(() => decodeHello(v1, 'peer a')).toThrow(/handshake version 1, this node 2/);
    expect(() => decodeHello(Buffer.concat([good, Buffer.from([0])]), 'a')).toThrow(TransportFrameError);
    expect(() => decodeHello(good.subarray(0, good.length - 1), 'a')).toThrow(TransportFrameError);
    expect(() => decodeHello(encodeHello({ ...h, incarnation: new Uint8Array(15) }), 'a')).toThrow(/incarnation/);
    expect(() => decodeHello(encodeHello({ ...h, knownIncarnation: new Uint8Array(8) }), 'a')).toThrow(
      /known incarnation of 8 bytes/,
    );
    const ack = { nonce: new Uint8Array(32), incarnation: new Uint8Array(16), knownIncarnation: undefined };
    expect(() => decodeHelloAck(encodeHelloAck({ ...ack, mac: new Uint8Array(31) }))).toThrow(/a proof of 31 bytes/);
    expect(() => decodeAuth(new Uint8Array(0))).toThrow(TransportFrameError);
  });
});
