/**
 * Requests for fleet groups by name: one RemoteGroupClient per Raft group id (its client session, so a retry keeps
 * its command id), the leader each answer named, and the order of the nodes to try. Shared by FleetNode (every
 * request: its own member replica is the first candidate, served in the process) and FleetClient (a process that
 * is not a node), which differ only in how they reach a node and which nodes they can reach.
 */
import type { FleetView } from '../../protocol/fleet/io.js';
import { groupRaftId, parseRaftGroupId } from '../../protocol/fleet/keys.js';
import { RemoteGroupClient, type RemoteGroupClientOptions } from '../../raft/node/remote-client.js';
import { jsonCodec, type Codec } from '../../raft/node/state-machine.js';
import type { Clock, TimerHandle } from '../../store/contract.js';

/** Clients kept (one per group requests are sent to); the oldest goes first, its session registered again if needed. */
const MAX_GROUP_CLIENTS = 10_000;

export interface GroupRoutesOptions {
  readonly clock: Clock;
  /** The default time of a call. */
  readonly requestTimeoutMs: number;
  /** Send one request to a node. */
  readonly request: (peer: string, payload: Uint8Array, timeoutMs: number) => Promise<Uint8Array>;
  /** Serve a request in the process when `peer` is this process's node (RemoteGroupClientOptions.inProcess). */
  readonly inProcess?: RemoteGroupClientOptions['inProcess'];
  /** The codec of a state machine (by name). */
  readonly codecOf: (machine: string) => Codec | undefined;
  /** The fleet as last read (asked again at every retry round of a call). */
  readonly view: () => FleetView | undefined;
  /** Whether a request can be sent to this node now (not this process, address known). */
  readonly reachable: (node: string, view: FleetView | undefined) => boolean;
  /**
   * A node process: its id, and whether it holds a member replica of a Raft group now. Such a replica is tried
   * first (`request` serves it in the process), so a local call and a routed one are the same call: when the
   * replica closes under it, the next holder gets it with the same (session, seq).
   */
  readonly self?: { readonly id: string; readonly holds: (id: string) => boolean };
}

export class GroupRoutes {
  readonly #o: GroupRoutesOptions;
  readonly #clients = new Map<string, RemoteGroupClient>();
  /** The leader the last answer named, by Raft group id. */
  readonly #leaderHints = new Map<string, string>();

  constructor(options: GroupRoutesOptions) {
    this.#o = options;
  }

  /** The remote client of Raft group `id` (of state machine `machine`). */
  client(id: string, machine: string): RemoteGroupClient {
    let client = this.#clients.get(id);
    if (client !== undefined) return client;
    const o = this.#o;
    const name = parseRaftGroupId(id)!.name;
    client = new RemoteGroupClient({
      group: id,
      codec: o.codecOf(machine) ?? jsonCodec,
      request: o.request,
      ...(o.inProcess === undefined ? {} : { inProcess: o.inProcess }),
      candidates: () => this.candidates(name, id),
      onLeaderHint: (leader) => this.#leaderHints.set(id, leader),
      clock: () => o.clock.now(),
      timers: {
        setTimeout: (fn, ms) => o.clock.setTimeout(fn, ms),
        clearTimeout: (h) => o.clock.clearTimeout(h as TimerHandle),
      },
      timeoutMs: o.requestTimeoutMs,
    });
    if (this.#clients.size >= MAX_GROUP_CLIENTS) {
      const oldest = this.#clients.keys().next().value as string;
      this.#clients.delete(oldest);
      this.#leaderHints.delete(oldest);
    }
    this.#clients.set(id, client);
    return client;
  }

  /**
   * Nodes to send a request for group `id` to, best first: this node when it holds a member replica, a leader hint,
   * the reported leader, members.
   */
  candidates(name: string, id: string): string[] {
    const view = this.#o.view();
    const g = view?.groups.get(name);
    const out: string[] = [];
    if (this.#o.self?.holds(id) === true) out.push(this.#o.self.id);
    this.#add(out, this.#leaderHints.get(id), view);
    if (g !== undefined && groupRaftId(g) === id) {
      this.#add(out, g.observed?.leader, view);
      this.#add(out, g.desired?.leader, view);
      for (const n of g.observed?.voters ?? []) this.#add(out, n, view);
      for (const n of g.desired?.members ?? []) this.#add(out, n, view);
    }
    return out;
  }

  /** Whether a request for group `id` can go anywhere now (candidates() without building the list). */
  routable(name: string, id: string): boolean {
    if (this.#o.self?.holds(id) === true) return true;
    return this.candidates(name, id).length > 0;
  }

  #add(out: string[], n: string | undefined, view: FleetView | undefined): void {
    if (n !== undefined && !out.includes(n) && this.#o.reachable(n, view)) out.push(n);
  }
}
