/**
 * An in-memory coordination "server": the state many MemoryStore clients
 * share, expired by its own (injected) clock. It is the store of the
 * deterministic simulator, so it has no randomness of its own: every fault it
 * injects is decided by a hook the simulator drives from its seed.
 */
import type { Clock, KeyValue, TimerHandle, WatchHint } from '../../store/contract.js';
import { systemClock } from '../../store/clock.js';

export interface StoredKey {
  value: string;
  version: number;
  createRevision: number;
  modRevision: number;
  sessionId: string | undefined;
}

export interface ServerSession {
  readonly id: string;
  readonly ttlMs: number;
  expiresAtMs: number;
  readonly namespace: string;
  readonly keys: Set<string>;
  timer: TimerHandle | undefined;
}

export interface ServerWatcher {
  readonly namespace: string;
  readonly prefix: string;
  notify(hint: WatchHint): void;
}

export interface Namespace {
  revision: number;
  readonly keys: Map<string, StoredKey>;
}

export class MemoryServer {
  readonly clock: Clock;
  readonly #namespaces = new Map<string, Namespace>();
  readonly #sessions = new Map<string, ServerSession>();
  readonly #watchers = new Set<ServerWatcher>();
  #sessionSeq = 0;
  /** When the server last lost its data (see loseData), on its clock. */
  lostDataAtMs: number | undefined;

  constructor(options?: { clock?: Clock }) {
    this.clock = options?.clock ?? systemClock;
  }

  namespace(name: string): Namespace {
    let ns = this.#namespaces.get(name);
    if (ns === undefined) {
      ns = { revision: 0, keys: new Map() };
      this.#namespaces.set(name, ns);
    }
    return ns;
  }

  toKeyValue(key: string, k: StoredKey): KeyValue {
    return {
      key,
      value: k.value,
      version: k.version,
      createRevision: k.createRevision,
      modRevision: k.modRevision,
      sessionId: k.sessionId,
    };
  }

  // ---- sessions -------------------------------------------------------------

  createSession(namespace: string, ttlMs: number): ServerSession {
    const id = `m${++this.#sessionSeq}`;
    const s: ServerSession = {
      id,
      ttlMs,
      namespace,
      expiresAtMs: this.clock.now() + ttlMs,
      keys: new Set(),
      timer: undefined,
    };
    this.#sessions.set(id, s);
    this.#armExpiry(s);
    return s;
  }

  session(id: string): ServerSession | undefined {
    return this.#sessions.get(id);
  }

  /** Extend a session; false when it no longer exists. */
  keepAlive(id: string): boolean {
    const s = this.#sessions.get(id);
    if (s === undefined) return false;
    s.expiresAtMs = this.clock.now() + s.ttlMs;
    return true;
  }

  /** End a session now and delete its keys (revoke, or expiry). */
  endSession(id: string): void {
    const s = this.#sessions.get(id);
    if (s === undefined) return;
    this.#sessions.delete(id);
    if (s.timer !== undefined) this.clock.clearTimeout(s.timer);
    if (s.keys.size === 0) return;
    const ns = this.namespace(s.namespace);
    const revision = ns.revision + 1;
    const changed: string[] = [];
    for (const key of s.keys) {
      const k = ns.keys.get(key);
      if (k !== undefined && k.sessionId === id) {
        ns.keys.delete(key);
        changed.push(key);
      }
    }
    if (changed.length > 0) {
      ns.revision = revision;
      this.publish(s.namespace, changed, revision);
    }
  }

  /**
   * A restart without persistence (the simulator's data-loss fault): every key and every session of every
   * namespace is gone at once. Revisions go on from where they were (as Redis's do: they never repeat), and every
   * watcher is told to re-read.
   */
  loseData(): void {
    this.lostDataAtMs = this.clock.now();
    for (const s of this.#sessions.values()) if (s.timer !== undefined) this.clock.clearTimeout(s.timer);
    this.#sessions.clear();
    for (const ns of this.#namespaces.values()) {
      ns.keys.clear();
      ns.revision++;
    }
    for (const w of [...this.#watchers]) w.notify({ revision: this.namespace(w.namespace).revision, reason: 'resync' });
  }

  /** Ids of live sessions (for tests and the simulator's oracle). */
  liveSessionIds(): string[] {
    return [...this.#sessions.keys()];
  }

  #armExpiry(s: ServerSession): void {
    s.timer = this.clock.setTimeout(
      () => {
        s.timer = undefined;
        if (!this.#sessions.has(s.id)) return;
        if (this.clock.now() >= s.expiresAtMs) this.endSession(s.id);
        else this.#armExpiry(s);
      },
      s.expiresAtMs - this.clock.now(),
      { background: true },
    );
  }

  // ---- key bookkeeping ------------------------------------------------------

  attach(key: string, sessionId: string | undefined, previous: string | undefined): void {
    if (previous !== undefined && previous !== sessionId) this.#sessions.get(previous)?.keys.delete(key);
    if (sessionId !== undefined) this.#sessions.get(sessionId)?.keys.add(key);
  }

  // ---- watches --------------------------------------------------------------

  addWatcher(w: ServerWatcher): void {
    this.#watchers.add(w);
  }

  removeWatcher(w: ServerWatcher): void {
    this.#watchers.delete(w);
  }

  publish(namespace: string, changedKeys: readonly string[], revision: number): void {
    for (const w of [...this.#watchers]) {
      if (w.namespace !== namespace) continue;
      if (changedKeys.some((k) => k.startsWith(w.prefix))) w.notify({ revision, reason: 'change' });
    }
  }
}
