/**
 * THE store conformance suite: every guarantee of the contract
 * (src/store/contract.ts, docs/store-contract.md), run unchanged against every
 * backend on real servers. A backend is conformant when all of it passes.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Session, Store, Txn, WatchHint } from '../../src/store/contract.js';
import {
  CorruptDataError,
  InvalidArgumentError,
  LimitExceededError,
  RebalancerError,
  SessionExpiredError,
} from '../../src/errors.js';
import { Election } from '../../src/store/election.js';
import { STORE_LIMITS } from '../../src/store/validate.js';
import { eventually, sleep } from '../harness/wait.js';
import { spawnClient, type ClientProcess } from './clients.js';

export interface ConformanceTarget {
  readonly backend: string;
  /** URL for child-process clients; undefined when the backend cannot be shared across processes. */
  readonly url: string | undefined;
  /** Session TTL the suite asks for (grantable exactly by the backend). */
  readonly ttlMs: number;
  /**
   * The TTL the backend grants for `ttlMs`, when less (default `ttlMs`): ZooKeeper asks the server for one
   * tickTime less, since the server expires sessions up to a tick after their timeout.
   */
  readonly grantedTtlMs?: number | undefined;
  /**
   * Stated bound: a session's keys vanish, and watchers hear of it, at most
   * `ttlMs + expiryBoundMs` after its client was paused, killed or cut off.
   */
  readonly expiryBoundMs: number;
  /** A new client of the same server on `namespace`. */
  open(namespace: string): Promise<Store>;
  /** In-process stand-in for spawnClient (memory backend only). */
  client?(namespace: string): Promise<ClientProcess>;
  /**
   * Make the stored record of an existing `key` of `namespace` one this backend cannot read, by the backend's own
   * means (a value that is not UTF-8; Redis: the key's hash replaced by another type). Absent for the memory
   * backend, which holds JavaScript values: nothing can be planted there.
   */
  corruptRecord?(namespace: string, key: string): Promise<void>;
  /**
   * What a put does over such a record: `refused` (CorruptDataError, nothing written: the default) or `replaced`
   * (etcd: its transactions cannot compare a value's encoding, so a put is blind — see docs/backends/etcd.md).
   */
  readonly putOverUnreadable?: 'refused' | 'replaced';
  /** Restart the server (same data). Absent for embedded backends. */
  restartServer?(): Promise<void>;
  teardown(): Promise<void>;
}

/** Collects hints of one watch. */
class HintLog {
  readonly hints: WatchHint[] = [];
  readonly fn = (h: WatchHint): void => void this.hints.push(h);
  maxRevision(): number {
    return this.hints.reduce((m, h) => Math.max(m, h.revision), 0);
  }
  countAfter(n: number): number {
    return this.hints.length - n;
  }
}

export function describeConformance(name: string, setup: () => Promise<ConformanceTarget>): void {
  describe(`store conformance: ${name}`, () => {
    let target: ConformanceTarget;
    const stores: Store[] = [];
    const clients: ClientProcess[] = [];

    beforeAll(async () => {
      target = await setup();
    });

    afterAll(async () => {
      for (const c of clients) await c.close().catch(() => undefined);
      for (const s of stores) await s.close().catch(() => undefined);
      await target?.teardown();
    });

    const freshNamespace = (): string => `c${randomBytes(5).toString('hex')}`;
    const open = async (ns: string): Promise<Store> => {
      const s = await target.open(ns);
      stores.push(s);
      return s;
    };
    const client = async (ns: string): Promise<ClientProcess> => {
      const c = target.client !== undefined ? await target.client(ns) : await spawnClient(target.url ?? '', ns);
      clients.push(c);
      return c;
    };
    const put = (s: Store, key: string, value: string, session?: Session) =>
      s.txn({ compare: [], then: [{ op: 'put', key, value, session }] });
    const expiryWindowMs = (): number => target.ttlMs + target.expiryBoundMs;

    // ---- keys and revisions ------------------------------------------------

    it('puts and gets revisioned keys', async () => {
      const s = await open(freshNamespace());
      expect(s.backend).toBe(target.backend);
      expect(await s.get('a')).toBeUndefined();
      const r1 = await put(s, 'a', 'one');
      expect(r1.succeeded).toBe(true);
      const kv1 = await s.get('a');
      expect(kv1).toMatchObject({
        key: 'a',
        value: 'one',
        version: 1,
        createRevision: r1.revision,
        modRevision: r1.revision,
      });
      expect(kv1?.sessionId).toBeUndefined();
      const r2 = await put(s, 'a', 'two');
      expect(r2.revision).toBeGreaterThan(r1.revision);
      expect(await s.get('a')).toMatchObject({
        value: 'two',
        version: 2,
        createRevision: r1.revision,
        modRevision: r2.revision,
      });
      const d = await s.txn({ compare: [], then: [{ op: 'delete', key: 'a' }] });
      expect(d.results[0]).toEqual({ op: 'delete', key: 'a', deleted: 1 });
      expect(await s.get('a')).toBeUndefined();
      const r3 = await put(s, 'a', 'three');
      expect(await s.get('a')).toMatchObject({ version: 1, createRevision: r3.revision });
      expect(r3.revision).toBeGreaterThan(d.revision);
    });

    it('verifyData: resolves while the data is there, and counts no loss', async () => {
      const s = await open(freshNamespace());
      await s.openSession({ ttlMs: target.ttlMs });
      await put(s, 'v', '1');
      await s.verifyData();
      await s.verifyData();
      expect(s.dataLosses).toBe(0);
    });

    it('bumps the revision only when something changed', async () => {
      const s = await open(freshNamespace());
      const w = await put(s, 'x', '1');
      const noop = await s.txn({ compare: [], then: [{ op: 'delete', key: 'missing' }] });
      expect(noop.results[0]).toEqual({ op: 'delete', key: 'missing', deleted: 0 });
      const after = await put(s, 'y', '1');
      // Nothing else writes this namespace: the no-op must not have consumed revisions visible as changes.
      expect(noop.revision).toBeGreaterThanOrEqual(w.revision);
      expect(after.revision).toBeGreaterThan(w.revision);
      expect((await s.get('x'))?.modRevision).toBe(w.revision);
    });

    it('reads prefixes in key order, exactly at the prefix boundary', async () => {
      const s = await open(freshNamespace());
      const keys = ['a/b', 'a/a', 'a/c/d', 'a0', 'a', 'b/a', 'a/ü', 'a/😀', 'a/sp ace', 'a/%2F', 'a/..', 'a/.'];
      let last = 0;
      for (const k of keys) last = (await put(s, k, `v:${k}`)).revision;
      const r = await s.range('a/');
      const expected = keys.filter((k) => k.startsWith('a/')).sort();
      expect(r.kvs.map((kv) => kv.key)).toEqual(expected);
      for (const kv of r.kvs) expect(kv.value).toBe(`v:${kv.key}`);
      expect(r.revision).toBeGreaterThanOrEqual(last);
      expect(typeof r.snapshot).toBe('boolean');
      expect((await s.range('')).kvs).toHaveLength(keys.length);
      expect((await s.range('zzz')).kvs).toEqual([]);
      const del = await s.txn({ compare: [], then: [{ op: 'deletePrefix', prefix: 'a/' }] });
      expect(del.results[0]).toEqual({ op: 'deletePrefix', prefix: 'a/', deleted: expected.length });
      expect((await s.range('')).kvs.map((kv) => kv.key)).toEqual(['a', 'a0', 'b/a']);
    });

    it('keeps namespaces apart', async () => {
      const ns1 = freshNamespace();
      const a = await open(ns1);
      const b = await open(freshNamespace());
      await put(a, 'k', 'a');
      expect(await b.get('k')).toBeUndefined();
      expect((await b.range('')).kvs).toEqual([]);
      await put(b, 'k', 'b');
      expect((await a.get('k'))?.value).toBe('a');
      const a2 = await open(ns1);
      expect((await a2.get('k'))?.value).toBe('a');
      expect(a.namespace).toBe(ns1);
    });

    // ---- transactions --------------------------------------------------------

    it('evaluates every compare target and runs the right branch atomically', async () => {
      const s = await open(freshNamespace());
      const w1 = await put(s, 'k', 'v1');
      const w2 = await put(s, 'k', 'v2');
      const cases: [Parameters<Store['txn']>[0]['compare'][number], boolean][] = [
        [{ key: 'k', target: 'exists', exists: true }, true],
        [{ key: 'k', target: 'exists', exists: false }, false],
        [{ key: 'nope', target: 'exists', exists: false }, true],
        [{ key: 'k', target: 'version', op: '=', value: 2 }, true],
        [{ key: 'k', target: 'version', op: '!=', value: 2 }, false],
        [{ key: 'k', target: 'version', op: '<', value: 3 }, true],
        [{ key: 'k', target: 'version', op: '>', value: 2 }, false],
        [{ key: 'nope', target: 'version', op: '=', value: 0 }, true],
        [{ key: 'k', target: 'createRevision', op: '=', value: w1.revision }, true],
        [{ key: 'k', target: 'createRevision', op: '=', value: w2.revision }, false],
        [{ key: 'k', target: 'modRevision', op: '=', value: w2.revision }, true],
        [{ key: 'k', target: 'modRevision', op: '<', value: w2.revision }, false],
        [{ key: 'k', target: 'modRevision', op: '>', value: w1.revision }, true],
        [{ key: 'nope', target: 'createRevision', op: '=', value: 0 }, true],
        [{ key: 'k', target: 'value', op: '=', value: 'v2' }, true],
        [{ key: 'k', target: 'value', op: '!=', value: 'v2' }, false],
        [{ key: 'k', target: 'value', op: '!=', value: 'other' }, true],
        // A value compare on a missing key is false either way (etcd's rule).
        [{ key: 'nope', target: 'value', op: '=', value: '' }, false],
        [{ key: 'nope', target: 'value', op: '!=', value: 'x' }, false],
      ];
      for (const [c, want] of cases) {
        const r = await s.txn({ compare: [c], then: [{ op: 'get', key: 'k' }], else: [{ op: 'get', key: 'nope' }] });
        expect({ c, succeeded: r.succeeded }).toEqual({ c, succeeded: want });
        expect(r.results[0]).toMatchObject({ op: 'get', key: want ? 'k' : 'nope' });
      }
      // All compares must hold; a failing txn writes nothing of `then` and all of `else`.
      const r = await s.txn({
        compare: [
          { key: 'k', target: 'exists', exists: true },
          { key: 'k', target: 'version', op: '=', value: 99 },
        ],
        then: [
          { op: 'put', key: 't1', value: 'x' },
          { op: 'put', key: 't2', value: 'x' },
        ],
        else: [
          { op: 'put', key: 'e1', value: 'y' },
          { op: 'put', key: 'e2', value: 'y' },
        ],
      });
      expect(r.succeeded).toBe(false);
      expect(await s.get('t1')).toBeUndefined();
      expect(await s.get('t2')).toBeUndefined();
      expect((await s.get('e1'))?.modRevision).toBe(r.revision);
      expect((await s.get('e2'))?.modRevision).toBe(r.revision);
      const g = await s.txn({
        compare: [],
        then: [
          { op: 'range', prefix: 'e' },
          { op: 'put', key: 'z', value: '1' },
        ],
      });
      expect(g.results[0]).toMatchObject({ op: 'range', prefix: 'e' });
      const rr = g.results[0];
      expect(rr?.op === 'range' ? rr.kvs.map((kv) => kv.key) : []).toEqual(['e1', 'e2']);
    });

    it('loses no update under concurrent compare-and-swap increments', async () => {
      const ns = freshNamespace();
      const workers = 6;
      const each = 15;
      const ss = await Promise.all(Array.from({ length: workers }, () => open(ns)));
      await put(ss[0]!, 'counter', '0');
      let conflicts = 0;
      await Promise.all(
        ss.map(async (s) => {
          for (let i = 0; i < each; i++) {
            for (;;) {
              const cur = await s.get('counter');
              if (cur === undefined) throw new Error('counter vanished');
              const r = await s.txn({
                compare: [{ key: 'counter', target: 'modRevision', op: '=', value: cur.modRevision }],
                then: [{ op: 'put', key: 'counter', value: String(Number(cur.value) + 1) }],
              });
              if (r.succeeded) break;
              conflicts++;
            }
          }
        }),
      );
      const final = await ss[0]!.get('counter');
      expect(final?.value).toBe(String(workers * each));
      expect(final?.version).toBe(workers * each + 1);
      expect(conflicts).toBeGreaterThanOrEqual(0);
    });

    it('never lets revisions go backwards, across clients', async () => {
      const ns = freshNamespace();
      const a = await open(ns);
      const b = await open(ns);
      const seen: number[] = [];
      const writer = async (s: Store, tag: string): Promise<void> => {
        for (let i = 0; i < 20; i++) {
          const r = await put(s, `${tag}/${i % 3}`, String(i));
          seen.push(r.revision);
        }
      };
      const reads: number[] = [];
      const reader = async (): Promise<void> => {
        for (let i = 0; i < 20; i++) reads.push((await b.range('')).revision);
      };
      const before = (await a.range('')).revision;
      await Promise.all([writer(a, 'a'), writer(b, 'b'), reader()]);
      // Each client's reads are monotonic, and every write revision is unique.
      for (let i = 1; i < reads.length; i++) expect(reads[i]).toBeGreaterThanOrEqual(reads[i - 1]!);
      expect(new Set(seen).size).toBe(seen.length);
      expect(Math.min(...seen)).toBeGreaterThan(before);
      const after = (await a.range('')).revision;
      expect(after).toBeGreaterThanOrEqual(Math.max(...seen));
    });

    // ---- bad input -----------------------------------------------------------

    it('takes a transaction without compare or then from an untyped caller as empty lists', async () => {
      const s = await open(freshNamespace());
      const r = await s.txn({ then: [{ op: 'put', key: 'untyped', value: '1' }] } as unknown as Txn);
      expect(r.succeeded).toBe(true);
      expect((await s.get('untyped'))?.value).toBe('1');
      expect((await s.txn({ compare: [] } as unknown as Txn)).succeeded).toBe(true);
    });

    it('rejects bad input with typed errors and writes nothing', async () => {
      const s = await open(freshNamespace());
      await put(s, 'keep', 'safe');
      const bad: [() => Promise<unknown>, abstract new (...args: never[]) => RebalancerError][] = [
        [() => put(s, '', 'x'), InvalidArgumentError],
        [() => put(s, 'a\0b', 'x'), InvalidArgumentError],
        [() => put(s, 'lone\ud800', 'x'), InvalidArgumentError],
        [() => put(s, 'k', 'lone\udc00'), InvalidArgumentError],
        [() => put(s, 'k'.repeat(STORE_LIMITS.maxKeyBytes + 1), 'x'), LimitExceededError],
        [() => put(s, 'é'.repeat(STORE_LIMITS.maxKeyBytes / 2 + 1), 'x'), LimitExceededError],
        [() => put(s, 'k', 'v'.repeat(STORE_LIMITS.maxValueBytes + 1)), LimitExceededError],
        [
          () =>
            s.txn({
              compare: [],
              then: Array.from({ length: STORE_LIMITS.maxTxnOps + 1 }, (_, i) => ({
                op: 'put' as const,
                key: `k${i}`,
                value: 'x',
              })),
            }),
          LimitExceededError,
        ],
        [
          () =>
            s.txn({
              compare: [],
              then: [
                { op: 'put', key: 'd', value: '1' },
                { op: 'put', key: 'd', value: '2' },
              ],
            }),
          InvalidArgumentError,
        ],
        [
          () =>
            s.txn({
              compare: [],
              then: [
                { op: 'put', key: 'p/x', value: '1' },
                { op: 'deletePrefix', prefix: 'p/' },
              ],
            }),
          InvalidArgumentError,
        ],
        [
          () =>
            s.txn({
              compare: [],
              then: [
                { op: 'put', key: 'r', value: '1' },
                { op: 'get', key: 'r' },
              ],
            }),
          InvalidArgumentError,
        ],
        [() => s.get(''), InvalidArgumentError],
        [() => s.openSession({ ttlMs: 10 }), InvalidArgumentError],
        [() => s.openSession({ ttlMs: Number.NaN }), InvalidArgumentError],
      ];
      for (const [call, type] of bad) {
        const err = await call().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(type);
        expect((err as RebalancerError).message.length).toBeGreaterThan(10);
      }
      // The largest legal key and value are accepted.
      const bigKey = 'k'.repeat(STORE_LIMITS.maxKeyBytes);
      await put(s, bigKey, 'v'.repeat(STORE_LIMITS.maxValueBytes));
      expect((await s.get(bigKey))?.value.length).toBe(STORE_LIMITS.maxValueBytes);
      const all = (await s.range('')).kvs.map((kv) => kv.key);
      expect(all).toEqual([bigKey, 'keep'].sort());
      expect((await s.get('keep'))?.value).toBe('safe');
    });

    // ---- data the backend cannot read ------------------------------------------

    it('a record the backend cannot read: CorruptDataError naming the key, never overwritten; the rest readable', async () => {
      if (target.corruptRecord === undefined) return; // memory: nothing can be planted (see ConformanceTarget)
      const ns = freshNamespace();
      const s = await open(ns);
      await s.txn({
        compare: [],
        then: [
          { op: 'put', key: 'cd/ok', value: 'fine' },
          { op: 'put', key: 'cd/bad', value: 'soon unreadable' },
        ],
      });
      await target.corruptRecord(ns, 'cd/bad');
      const named = async (p: Promise<unknown>, what: string): Promise<void> => {
        const e = await p.then(
          () => undefined,
          (x: unknown) => x,
        );
        expect(e, what).toBeInstanceOf(CorruptDataError);
        expect((e as CorruptDataError).key, what).toBe('cd/bad');
      };
      await named(s.get('cd/bad'), 'get');
      await named(s.range('cd/'), 'range');
      await named(s.txn({ compare: [], then: [{ op: 'get', key: 'cd/bad' }] }), 'txn get');
      // The rest of the namespace stays readable (a read that leaves the key out).
      expect((await s.get('cd/ok'))?.value).toBe('fine');
      const r = await s.txn({ compare: [], then: [{ op: 'get', key: 'cd/ok' }] });
      expect(r.results[0]).toMatchObject({ op: 'get', kv: { value: 'fine' } });
      const put = s.txn({ compare: [], then: [{ op: 'put', key: 'cd/bad', value: 'overwritten' }] });
      if (target.putOverUnreadable === 'replaced') {
        await put;
        expect((await s.get('cd/bad'))?.value).toBe('overwritten');
      } else {
        await named(put, 'txn put');
        // The put was refused, not applied: the record is still the unreadable one.
        await named(s.get('cd/bad'), 'get after the refused put');
      }
    });

    // ---- sessions ------------------------------------------------------------

    it('keeps a session alive and attaches keys to it', async () => {
      const s = await open(freshNamespace());
      const session = await s.openSession({ ttlMs: target.ttlMs });
      expect(session.state).toBe('live');
      expect(session.ttlMs).toBeGreaterThanOrEqual(target.grantedTtlMs ?? target.ttlMs);
      expect(session.safeUntilMs).toBeGreaterThan(s.clock.now());
      expect(session.safeUntilMs).toBeLessThanOrEqual(s.clock.now() + session.ttlMs);
      await put(s, 'owned', 'x', session);
      await put(s, 'free', 'x');
      expect((await s.get('owned'))?.sessionId).toBe(session.id);
      // Outlive several TTLs: the background keep-alive holds it.
      await sleep(session.ttlMs * 1.6);
      expect(session.state).toBe('live');
      const before = session.safeUntilMs;
      await session.keepAlive();
      expect(session.safeUntilMs).toBeGreaterThan(before - 1);
      expect((await s.get('owned'))?.sessionId).toBe(session.id);
      // A put without a session detaches the key.
      await put(s, 'owned2', 'x', session);
      await put(s, 'owned2', 'y');
      expect((await s.get('owned2'))?.sessionId).toBeUndefined();
      await session.close();
      expect(session.state).toBe('closed');
      expect(await session.ended).toMatchObject({ state: 'closed' });
      expect(await s.get('owned')).toBeUndefined();
      expect((await s.get('owned2'))?.value).toBe('y');
      expect((await s.get('free'))?.value).toBe('x');
    });

    it('fails a whole transaction that names an ended session', async () => {
      const s = await open(freshNamespace());
      const session = await s.openSession({ ttlMs: target.ttlMs });
      await session.close();
      const err = await s
        .txn({
          compare: [],
          then: [
            { op: 'put', key: 'plain', value: '1' },
            { op: 'put', key: 'bound', value: '1', session },
          ],
        })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(err).toBeInstanceOf(SessionExpiredError);
      expect(await s.get('plain')).toBeUndefined();
      expect(await s.get('bound')).toBeUndefined();
    });

    it('attaches keys only through the store that opened the session', async () => {
      const ns = freshNamespace();
      const a = await open(ns);
      const b = await open(ns);
      const session = await a.openSession({ ttlMs: target.ttlMs });
      const notASession = { ...session, id: session.id } as Session;
      for (const foreign of [session, notASession]) {
        const err = await put(b, 'k', 'v', foreign).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(InvalidArgumentError);
        expect((err as Error).message).toContain('was not opened by this store');
      }
      expect(await b.get('k')).toBeUndefined();
      expect(session.state).toBe('live');
      // A watch without a function to call is refused the same way everywhere.
      const noHint = await b.watch('', 'not a function' as unknown as (h: WatchHint) => void).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(noHint).toBeInstanceOf(InvalidArgumentError);
      await session.close();
    });

    it('never leaves a session alive that was opened while the store closed', async () => {
      const s = await open(freshNamespace());
      const opening = s.openSession({ ttlMs: target.ttlMs }).then(
        (session) => session,
        (e: unknown) => e,
      );
      await s.close();
      const result = await opening;
      if (result instanceof Error) {
        expect(result).toBeInstanceOf(RebalancerError);
      } else {
        // Whatever the store returned has ended: nothing keeps it alive or lets keys be attached to it.
        expect(['closed', 'expired']).toContain((result as Session).state);
      }
      expect(
        await s.get('k').then(
          () => undefined,
          (e: unknown) => e,
        ),
      ).toBeInstanceOf(RebalancerError);
    });

    it('ends sessions independently, and tells watchers when keys vanish', async () => {
      const ns = freshNamespace();
      const s = await open(ns);
      const observer = await open(ns);
      const s1 = await s.openSession({ ttlMs: target.ttlMs });
      const s2 = await s.openSession({ ttlMs: target.ttlMs });
      expect(s1.id).not.toBe(s2.id);
      await put(s, 'm/1', 'x', s1);
      await put(s, 'm/2', 'x', s2);
      const log = new HintLog();
      const w = await observer.watch('m/', log.fn);
      const n = log.hints.length;
      await s1.close();
      await eventually(() => log.countAfter(n) > 0, {
        what: "a hint that the closed session's key vanished",
        timeoutMs: 5000,
      });
      expect((await observer.range('m/')).kvs.map((kv) => kv.key)).toEqual(['m/2']);
      expect(s2.state).toBe('live');
      await w.close();
    });

    it('expires the session of a paused client within TTL + bound; its keys vanish and watchers hear', async () => {
      const ns = freshNamespace();
      const observer = await open(ns);
      const c = await client(ns);
      const opened = await c.request({ cmd: 'open', ttlMs: target.ttlMs });
      expect(opened.ok).toBe(true);
      expect((await c.request({ cmd: 'put', key: 'p/held', value: 'x', attach: true })).ok).toBe(true);
      expect((await observer.get('p/held'))?.sessionId).toBe(opened.ok ? opened.sessionId : 'none');
      const log = new HintLog();
      const w = await observer.watch('p/', log.fn);
      const n = log.hints.length;
      const pausedAt = Date.now();
      c.pause();
      try {
        await eventually(async () => (await observer.get('p/held')) === undefined, {
          what: "the paused client's key to vanish",
          timeoutMs: expiryWindowMs() + 5000,
          intervalMs: 50,
        });
        const tookMs = Date.now() - pausedAt;
        expect(tookMs).toBeLessThanOrEqual(expiryWindowMs());
        await eventually(() => log.countAfter(n) > 0, {
          what: "a hint that the paused client's key vanished",
          timeoutMs: target.expiryBoundMs + 1000,
        });
      } finally {
        c.resume();
      }
      // After resuming, the client must learn that its session is gone.
      await eventually(
        async () => {
          const r = await c.request({ cmd: 'sessionState' });
          return r.ok && r.state === 'expired';
        },
        { what: 'the resumed client to learn that its session expired', timeoutMs: 10_000, intervalMs: 100 },
      );
      const again = await c.request({ cmd: 'put', key: 'p/again', value: 'x', attach: true });
      expect(again).toMatchObject({ ok: false, code: 'SESSION_EXPIRED' });
      expect(await observer.get('p/again')).toBeUndefined();
      await w.close();
    });

    it('expires the session of a killed client within TTL + bound', async () => {
      const ns = freshNamespace();
      const observer = await open(ns);
      const c = await client(ns);
      expect((await c.request({ cmd: 'open', ttlMs: target.ttlMs })).ok).toBe(true);
      expect((await c.request({ cmd: 'put', key: 'k/held', value: 'x', attach: true })).ok).toBe(true);
      const killedAt = Date.now();
      c.kill();
      await eventually(async () => (await observer.get('k/held')) === undefined, {
        what: "the killed client's key to vanish",
        timeoutMs: expiryWindowMs() + 5000,
        intervalMs: 50,
      });
      expect(Date.now() - killedAt).toBeLessThanOrEqual(expiryWindowMs());
    });

    // ---- watches -------------------------------------------------------------

    it('hints watchers of a prefix after changes, with a revision, until closed', async () => {
      const ns = freshNamespace();
      const s = await open(ns);
      const log = new HintLog();
      let throwing = 0;
      const w = await s.watch('w/', log.fn);
      const bad = await s.watch('w/', () => {
        throwing++;
        throw new Error('a consumer bug must not break the store');
      });
      const r1 = await put(s, 'w/a', '1');
      await eventually(() => log.maxRevision() >= r1.revision, { what: 'a hint of the put', timeoutMs: 5000 });
      const r2 = await s.txn({ compare: [], then: [{ op: 'delete', key: 'w/a' }] });
      await eventually(() => log.maxRevision() >= r2.revision, { what: 'a hint of the delete', timeoutMs: 5000 });
      await put(s, 'w/b', '1');
      const r3 = await s.txn({ compare: [], then: [{ op: 'deletePrefix', prefix: 'w/' }] });
      await eventually(() => log.maxRevision() >= r3.revision, {
        what: 'a hint of the prefix delete',
        timeoutMs: 5000,
      });
      // Another client's change is heard too.
      const other = await open(ns);
      const r4 = await put(other, 'w/c', '1');
      await eventually(() => log.maxRevision() >= r4.revision, {
        what: "a hint of another client's put",
        timeoutMs: 5000,
      });
      expect(throwing).toBeGreaterThan(0);
      for (const h of log.hints) expect(['change', 'resync']).toContain(h.reason);
      await w.close();
      await w.close();
      await bad.close();
      const n = log.hints.length;
      await put(s, 'w/d', '1');
      await sleep(300);
      expect(log.hints.length).toBe(n);
    });

    // ---- election -------------------------------------------------------------

    it("refuses a stale leader's guarded write", async () => {
      const ns = freshNamespace();
      const s = await open(ns);
      const a = await client(ns);
      expect((await a.request({ cmd: 'open', ttlMs: target.ttlMs })).ok).toBe(true);
      const ta = await a.request({ cmd: 'campaign', prefix: 'lead/', value: 'a' });
      expect(ta.ok).toBe(true);
      const tokenA = ta.ok ? (ta.token ?? 0) : 0;
      expect(await a.request({ cmd: 'guardedWrite', key: 'fenced', value: 'a1' })).toMatchObject({
        ok: true,
        succeeded: true,
      });
      a.pause();
      try {
        const session = await s.openSession({ ttlMs: target.ttlMs });
        const election = new Election(s, { prefix: 'lead/', recheckIntervalMs: 200 });
        const b = await election.campaign(session, 'b', AbortSignal.timeout(expiryWindowMs() + 10_000));
        expect(b.token).toBeGreaterThan(tokenA);
        const wb = await s.txn({ compare: [b.guard], then: [{ op: 'put', key: 'fenced', value: 'b1' }] });
        expect(wb.succeeded).toBe(true);
      } finally {
        a.resume();
      }
      // A still holds its old leadership object and writes at once, as a paused process would.
      const stale = await a.request({ cmd: 'guardedWrite', key: 'fenced', value: 'a2' });
      expect(stale.ok ? stale.succeeded : stale.code).not.toBe(true);
      if (!stale.ok) expect(['SESSION_EXPIRED', 'STORE_UNAVAILABLE']).toContain(stale.code);
      expect((await s.get('fenced'))?.value).toBe('b1');
    });

    it('never lets two candidates act as leader (randomised pauses, many rounds)', async () => {
      const ns = freshNamespace();
      const s = await open(ns);
      const candidates = await Promise.all([client(ns), client(ns), client(ns)]);
      const durationMs = Math.max(8000, target.ttlMs * 5);
      const loops = candidates.map((c, i) =>
        c.request(
          {
            cmd: 'electionLoop',
            prefix: 'e/',
            logKey: 'log',
            name: `c${i}`,
            ttlMs: target.ttlMs,
            durationMs,
            writesPerTerm: 5,
          },
          durationMs + 60_000,
        ),
      );
      // Chaos: pause a random candidate for 0.3–1.8 TTL, repeatedly.
      const end = Date.now() + durationMs - target.ttlMs;
      let pauses = 0;
      while (Date.now() < end) {
        const victim = candidates[Math.floor(Math.random() * candidates.length)]!;
        victim.pause();
        pauses++;
        await sleep(target.ttlMs * (0.3 + Math.random() * 1.5));
        victim.resume();
        await sleep(Math.random() * target.ttlMs * 0.5);
      }
      const replies = await Promise.all(loops);
      for (const r of replies) expect(r.ok).toBe(true);
      const log = (await s.get('log'))?.value ?? '';
      const tokens = log
        .split(',')
        .filter((t) => t !== '')
        .map(Number);
      // Once a newer leader has written, no older leader ever writes again.
      for (let i = 1; i < tokens.length; i++) expect(tokens[i]).toBeGreaterThanOrEqual(tokens[i - 1]!);
      expect(new Set(tokens).size).toBeGreaterThanOrEqual(2);
      expect(pauses).toBeGreaterThan(1);
    }, 180_000);

    // ---- server restart (networked backends) ------------------------------------

    it('after a server restart, keeps each session or reports it expired, and watches resync', async () => {
      if (target.restartServer === undefined) {
        // Embedded backends have no server to restart; the same property is
        // covered by their process-kill tests. Assert that this is deliberate.
        expect(['memory', 'sqlite']).toContain(target.backend);
        return;
      }
      const ns = freshNamespace();
      const s = await open(ns);
      const observer = await open(ns);
      const session = await s.openSession({ ttlMs: target.ttlMs });
      await put(s, 'r/held', 'x', session);
      const log = new HintLog();
      const w = await observer.watch('r/', log.fn);
      await target.restartServer();
      // Within a few TTLs the client converges to one of the two honest answers.
      await eventually(
        async () => {
          const stateOf = (x: Session): string => x.state; // read afresh: it changes under us
          if (stateOf(session) === 'expired') return true;
          try {
            await session.keepAlive();
          } catch {
            return stateOf(session) === 'expired';
          }
          const kv = await s.get('r/held').catch(() => undefined);
          return session.state === 'live' && kv?.sessionId === session.id;
        },
        {
          what: 'the session to be either confirmed alive with its key, or expired',
          timeoutMs: expiryWindowMs() * 3 + 15_000,
          intervalMs: 100,
        },
      );
      if (session.state === 'expired') {
        await eventually(async () => (await observer.get('r/held').catch(() => 'err')) === undefined, {
          what: "the expired session's key to vanish",
          timeoutMs: expiryWindowMs() + 10_000,
          intervalMs: 100,
        });
      }
      // The watch survived the restart: new changes are heard.
      await eventually(
        async () => {
          try {
            const res = await put(observer, 'r/after', String(Date.now()));
            return eventually(() => log.maxRevision() >= res.revision, {
              what: 'the watch to hear the put',
              timeoutMs: 2000,
            });
          } catch {
            return false;
          }
        },
        { what: 'the watch to hear a change after the restart', timeoutMs: 20_000, intervalMs: 200 },
      );
      await w.close();
    }, 120_000);
  });
}
