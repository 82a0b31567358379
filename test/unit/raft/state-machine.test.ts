/**
 * The applier: exactly-once commands by (session, seq), deterministic session eviction, snapshots that carry the
 * session table, and entries that are not ours refused as corrupt.
 */
import { describe, expect, it } from 'vitest';
import { CorruptDataError, InvariantError } from '../../../src/errors.js';
import {
  Applier,
  decodeEntry,
  encodeCommand,
  encodeRegister,
  jsonCodec,
  NONCE_BYTES,
} from '../../../src/raft/node/state-machine.js';
import { kvStateMachine } from '../../../src/sim/raft-kv.js';

const sm = kvStateMachine() as never;
const nonce = (b: number): Uint8Array => new Uint8Array(NONCE_BYTES).fill(b);
const cmd = (session: number, seq: number, lowest: number, c: unknown): Uint8Array =>
  encodeCommand(session, seq, lowest, jsonCodec.encode(c));

describe('Applier', () => {
  it('applies a command once however often it is in the log, and answers each copy', () => {
    const a = new Applier(sm, jsonCodec, 10);
    expect(a.apply(1, encodeRegister(nonce(1)), 'g')).toEqual({
      kind: 'registered',
      nonce: '01'.repeat(16),
      session: 1,
    });
    const append = { op: 'append', key: 'k', value: 'x' };
    expect(a.apply(2, cmd(1, 1, 1, append), 'g')).toMatchObject({ kind: 'result', seq: 1 });
    expect(a.apply(3, cmd(1, 1, 1, append), 'g')).toMatchObject({ kind: 'result', seq: 1 }); // a retry
    expect(a.apply(4, cmd(1, 2, 1, append), 'g')).toMatchObject({ kind: 'result', seq: 2 });
    expect(a.query({ op: 'get', key: 'k' })).toBe('xx');
    // The client has its answers below 3: a late copy of seq 1 is ignored, never applied again.
    expect(a.apply(5, cmd(1, 3, 3, append), 'g')).toMatchObject({ kind: 'result', seq: 3 });
    expect(a.apply(6, cmd(1, 1, 1, append), 'g')).toEqual({ kind: 'ignored' });
    expect(a.query({ op: 'get', key: 'k' })).toBe('xxx');
  });

  it('commands of an unknown session are not applied (expired)', () => {
    const a = new Applier(sm, jsonCodec, 10);
    expect(a.apply(1, cmd(99, 1, 1, { op: 'put', key: 'k', value: 'v' }), 'g')).toEqual({
      kind: 'expired',
      session: 99,
      seq: 1,
    });
    expect(a.query({ op: 'get', key: 'k' })).toBeNull();
  });

  it('evicts the least recently used session beyond maxSessions, the same on every replica', () => {
    const run = (): Applier<unknown> => {
      const a = new Applier(sm, jsonCodec, 2);
      a.apply(1, encodeRegister(nonce(1)), 'g'); // session 1
      a.apply(2, encodeRegister(nonce(2)), 'g'); // session 2
      a.apply(3, cmd(1, 1, 1, { op: 'put', key: 'a', value: '1' }), 'g'); // 1 used: 2 is now the oldest
      a.apply(4, encodeRegister(nonce(3)), 'g'); // session 4: evicts 2
      return a;
    };
    const a = run();
    expect(a.sessionCount).toBe(2);
    expect(a.apply(5, cmd(2, 1, 1, { op: 'put', key: 'b', value: '1' }), 'g')).toMatchObject({ kind: 'expired' });
    expect(a.apply(6, cmd(1, 2, 1, { op: 'put', key: 'b', value: '1' }), 'g')).toMatchObject({ kind: 'result' });
    expect(run().snapshot()).toEqual(run().snapshot());
  });

  it('a snapshot carries the state and the sessions: a retry after restore is still answered, not re-applied', () => {
    const a = new Applier(sm, jsonCodec, 10);
    a.apply(1, encodeRegister(nonce(1)), 'g');
    a.apply(2, cmd(1, 1, 1, { op: 'append', key: 'k', value: 'x' }), 'g');
    const b = new Applier(sm, jsonCodec, 10);
    b.restore(2, a.snapshot(), 'g');
    expect(b.index).toBe(2);
    expect(b.apply(3, cmd(1, 1, 1, { op: 'append', key: 'k', value: 'x' }), 'g')).toMatchObject({ kind: 'result' });
    expect(b.query({ op: 'get', key: 'k' })).toBe('x');
  });

  it('refuses what is not its own: foreign entries, broken snapshots, gaps', () => {
    const a = new Applier(sm, jsonCodec, 10);
    expect(() => decodeEntry(new Uint8Array([7, 1, 2]), 'g')).toThrow(CorruptDataError);
    expect(() => a.apply(1, new Uint8Array([2, 0, 0]), 'g')).toThrow(CorruptDataError);
    expect(a.index).toBe(0); // nothing applied
    expect(() => a.restore(5, new Uint8Array([1, 2, 3]), 'g')).toThrow(CorruptDataError);
    expect(() => a.apply(3, undefined, 'g')).toThrow(InvariantError);
  });
});
