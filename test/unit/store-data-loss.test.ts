/**
 * A store that loses its data (src/store/incarnation.ts, ADR 0009), on the memory server with virtual time: a
 * fresh namespace grants sessions at once; after the server lost its data every client's sessions end with
 * StoreDataLostError, and no session is granted until the longest TTL has passed; a runtime reports the loss
 * (typed error event) and comes back by itself; the reserved record is invisible and not writable.
 */
import { describe, expect, it } from 'vitest';
import { MemoryServer } from '../../src/backends/memory/server.js';
import { MemoryStore } from '../../src/backends/memory/store.js';
import { InvalidArgumentError, StoreDataLostError, StoreRecoveringError } from '../../src/errors.js';
import { GroupAdmin, joinGroup } from '../../src/groups/index.js';
import { VirtualClock } from '../../src/store/clock.js';
import type { Session } from '../../src/store/contract.js';
import { INCARNATION_KEY } from '../../src/store/incarnation.js';
import { drive, until as untilWithin } from '../harness/virtual-time.js';

/** The delayed restart waits out maxSessionTtlMs (30 s here): allow that much virtual time by default. */
const until = (clock: VirtualClock, pred: () => boolean, what: string, maxMs = 30_000): Promise<void> =>
  untilWithin(clock, pred, what, maxMs);

const MAX_TTL = 3000;

function setup(): { clock: VirtualClock; server: MemoryServer; store: () => MemoryStore } {
  const clock = new VirtualClock(1000);
  const server = new MemoryServer({ clock });
  return { clock, server, store: () => new MemoryStore({ server, clock, maxSessionTtlMs: MAX_TTL }) };
}

describe('a store that loses its data', () => {
  it('a fresh namespace grants sessions at once; its record is hidden from reads and refused to writers', async () => {
    const { clock, store } = setup();
    const s = store();
    const session = await drive(clock, s.openSession({ ttlMs: 2000 }));
    expect(session.state).toBe('live');
    await drive(clock, s.txn({ compare: [], then: [{ op: 'put', key: 'a', value: '1' }] }));
    expect((await drive(clock, s.range(''))).kvs.map((kv) => kv.key)).toEqual(['a']);
    expect(JSON.parse((await drive(clock, s.get(INCARNATION_KEY)))!.value)).toMatchObject({ state: 'mature' });
    await expect(
      drive(clock, s.txn({ compare: [], then: [{ op: 'delete', key: INCARNATION_KEY }] })),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    // A session above the namespace's longest TTL is refused, saying what to change.
    await expect(drive(clock, s.openSession({ ttlMs: MAX_TTL + 1 }))).rejects.toThrow(/maxSessionTtlMs/);
    await drive(clock, s.close());
  });

  it('every session ends with StoreDataLostError, and none is granted until the longest TTL has passed', async () => {
    const { clock, server, store } = setup();
    const a = store();
    const b = store();
    const sa: Session = await drive(clock, a.openSession({ ttlMs: 2000 }));
    await drive(clock, b.openSession({ ttlMs: 2000 }));
    await clock.runFor(1000);
    const lostAt = clock.now();
    server.loseData();
    const end = await drive(clock, sa.ended);
    expect(end.state).toBe('expired');
    // A new session: the one who notices the loss first hears it; after that, everyone waits.
    const first = await drive(clock, a.openSession({ ttlMs: 2000 })).catch((e: unknown) => e);
    expect(first instanceof StoreDataLostError || first instanceof StoreRecoveringError).toBe(true);
    const waits: number[] = [];
    for (;;) {
      const r = await drive(clock, b.openSession({ ttlMs: 2000 })).catch((e: unknown) => e);
      if (!(r instanceof StoreRecoveringError || r instanceof StoreDataLostError)) break;
      if (r instanceof StoreRecoveringError) waits.push(r.retryAfterMs);
      await clock.runFor(100);
    }
    // Granted only once every lease from before could have ended (the longest TTL, stretched by the drift bound).
    expect(clock.now() - lostAt).toBeGreaterThanOrEqual(MAX_TTL);
    expect(waits.length).toBeGreaterThan(0);
    // The record is mature now: a new client does not wait.
    const c = store();
    await drive(clock, c.openSession({ ttlMs: 2000 }));
    for (const s of [a, b, c]) await drive(clock, s.close());
  });

  it('verifyData finds a loss at once (not a third of a TTL later), ends the sessions, and dataLosses counts it', async () => {
    const { clock, server, store } = setup();
    const a = store();
    const session = await drive(clock, a.openSession({ ttlMs: 3000 }));
    await drive(clock, a.verifyData()); // nothing lost: resolves
    expect(a.dataLosses).toBe(0);
    server.loseData();
    // Before the periodic check has run: a read already sees the emptied data; verifyData says why.
    const err = await drive(clock, a.verifyData()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoreDataLostError);
    expect(a.dataLosses).toBe(1);
    expect((await drive(clock, session.ended)).state).toBe('expired');
    // Counted once: the next check has nothing new to say.
    await drive(clock, a.verifyData());
    expect(a.dataLosses).toBe(1);
    await drive(clock, a.close());
  });

  it('a member reports the loss as a typed error event, stops at once, and runs again after the wait', async () => {
    const { clock, server, store } = setup();
    const s = store();
    await drive(clock, new GroupAdmin(s, 'g').add(['r1']));
    const errors: unknown[] = [];
    let running = 0;
    let stoppedAt: number | undefined;
    const member = await drive(
      clock,
      joinGroup({
        store: s,
        group: 'g',
        node: { id: 'n1' },
        clock,
        sessionTtlMs: 2000,
        handler: (ctx) =>
          new Promise<void>((resolve) => {
            running++;
            ctx.signal.addEventListener('abort', () => {
              running--;
              stoppedAt = clock.now();
              resolve();
            });
          }),
      }).then((m) => {
        m.on('error', ({ error }) => errors.push(error));
        return m;
      }),
    );
    await until(clock, () => running === 1, 'r1 runs');
    const lostAt = clock.now();
    server.loseData();
    await until(clock, () => running === 0, 'r1 stopped');
    expect(stoppedAt! - lostAt).toBeLessThanOrEqual(2000 / 3 + 50);
    await until(clock, () => errors.some((e) => e instanceof StoreDataLostError), 'a DATA_LOST error event');
    // The registry went with the data: registered again (as the error message says), r1 runs again after the wait.
    await drive(clock, new GroupAdmin(s, 'g').add(['r1']));
    await until(clock, () => running === 1, 'r1 runs again');
    expect(clock.now() - lostAt).toBeGreaterThanOrEqual(MAX_TTL);
    await drive(clock, member.leave());
    await drive(clock, s.close());
  });

  it('clients of one namespace must agree on maxSessionTtlMs', async () => {
    const { clock, server, store } = setup();
    await drive(clock, store().openSession({ ttlMs: 2000 }));
    const other = new MemoryStore({ server, clock, maxSessionTtlMs: 10_000 });
    await expect(drive(clock, other.openSession({ ttlMs: 2000 }))).rejects.toThrow(/must use the same value/);
  });
});
