/**
 * Keeps a node's replicas from voting when it cannot know whether it voted before (docs/raft.md, "A node that lost
 * its data"). Fresh data on a cluster's first start and fresh data after a wipe look the same locally: the peers
 * tell, in the transport's handshake, under which incarnation they knew this node.
 *
 * - A node whose data directory is new (its incarnation made at this start) grants no vote and does not campaign
 *   until a majority of its peers have answered; at a cluster's first start they all say "never seen you". Peers
 *   come and go (RaftNode.setPeer/removePeer): the majority is of the peers known when it is counted (at every
 *   replica opened, answer, peer added or removed); once reached, votes stay released for this run. A node that
 *   has never had a peer in this run needs no answer; one that had peers and has none now waits for one.
 * - A node that a peer knew under another incarnation lost its data. Every replica it opens holds its votes until
 *   it has caught up with a leader of its group, made that durable, and waited one more maximum election timeout
 *   (Core.holdVotes('leader-seen')). Every group, not only those it holds no state for: a group's state it holds
 *   now was rebuilt after the loss and says nothing about the votes it gave before. This state is durable (the
 *   identity file's `rejoining`) until every open replica is past its hold: a crash meanwhile does not end it.
 * - A peer that comes back under another incarnation lost its data: the leaders here forget what they knew of its
 *   logs (Core.peerLostData), or they would probe above its empty logs forever.
 */
import { DiskFailedError, RaftDataLostError, describe, type RebalancerError } from '../../errors.js';
import type { Core } from '../core.js';
import type { PeerIdentity } from '../transport/transport.js';
import type { NodeIdentity } from './identity.js';

export interface VoteGuardOptions {
  readonly nodeId: string;
  readonly identity: NodeIdentity;
  /** The peers known at start (more come with addPeer). */
  readonly peers: readonly string[];
  readonly report: (error: RebalancerError, context: string) => void;
  /** A peer came back with another incarnation: its replicas lost their logs (leaders here must forget them). */
  readonly peerLostData: (peer: string) => void;
}

export class VoteGuard {
  readonly #o: VoteGuardOptions;
  readonly #cores = new Set<Core>();
  /** Peers that answered the handshake in this run. */
  readonly #heard = new Set<string>();
  readonly #peers: Set<string>;
  #hadPeers: boolean;
  /** New data only: whether a majority of the peers answered at some point of this run (then votes stay free). */
  #released: boolean;
  /** Replicas opened from now on hold votes until caught up with a leader. */
  #lost: boolean;
  /** Whether the loss was reported in this run (reported once; later peers saying the same add nothing). */
  #reported = false;
  #clearing = false;

  constructor(o: VoteGuardOptions) {
    this.#o = o;
    this.#lost = o.identity.rejoining;
    this.#peers = new Set(o.peers);
    this.#hadPeers = this.#peers.size > 0;
    this.#released = !o.identity.created;
  }

  /**
   * Answers needed before a node with new data may vote: a majority of the peers known now; none for a node that
   * never had a peer in this run, one for a node whose peers were all removed.
   */
  get peersNeeded(): number {
    const n = this.#peers.size;
    if (n === 0) return this.#hadPeers ? 1 : 0;
    return Math.min(n, Math.floor(n / 2) + 1);
  }

  /** Whether votes still wait for the peers' answers (new data only). */
  get awaitingPeers(): boolean {
    return !this.#released && this.#heardKnown() < this.peersNeeded;
  }

  #heardKnown(): number {
    let n = 0;
    for (const p of this.#heard) if (this.#peers.has(p)) n++;
    return n;
  }

  /** A peer was added (RaftNode.setPeer): until votes are released, its answer counts and is needed. */
  addPeer(peer: string): void {
    this.#peers.add(peer);
    this.#hadPeers = true;
  }

  /** A peer was removed: a majority of those left may now suffice. */
  removePeer(peer: string): void {
    this.#peers.delete(peer);
    this.#maybeRelease();
  }

  /** Latch the release once a majority of the peers known now have answered (see the class comment). */
  #maybeRelease(): void {
    if (this.#released || this.#heardKnown() < this.peersNeeded) return;
    this.#released = true;
    for (const core of this.#cores) core.releaseVotes();
  }

  /** Whether the node is rejoining after a loss of its data (some replica may still hold its votes). */
  get rejoining(): boolean {
    return this.#lost;
  }

  /** A replica opened: it holds its votes as the node's state requires. */
  attach(core: Core): void {
    this.#cores.add(core);
    this.#maybeRelease();
    if (this.awaitingPeers) core.holdVotes('released');
    if (this.#lost) core.holdVotes('leader-seen');
  }

  /**
   * A peer authenticated (the transport waits for this before the connection carries anything). A loss of our
   * data is acted on, and the peer's incarnation recorded, durably, first.
   */
  async onPeerIdentity(peer: string, identity: PeerIdentity): Promise<void> {
    const mine = this.#o.identity.incarnation;
    if (identity.knewMeAs !== undefined && Buffer.compare(identity.knewMeAs, mine) !== 0 && !this.#reported) {
      this.#reported = true;
      if (!this.#lost) {
        this.#lost = true;
        for (const core of this.#cores) core.holdVotes('leader-seen');
      }
      this.#o.report(new RaftDataLostError(this.#o.nodeId, peer), 'raft node');
      await this.#o.identity.setRejoining(true);
    }
    const known = this.#o.identity.known(peer);
    await this.#o.identity.recordPeer(peer, identity.incarnation);
    if (known !== undefined && Buffer.compare(known, identity.incarnation) !== 0) this.#o.peerLostData(peer);
    this.#heard.add(peer);
    this.#maybeRelease();
  }

  /** A replica closed or dropped: it no longer counts for the hold. */
  detach(core: Core): void {
    this.#cores.delete(core);
  }

  /** Once every open replica is past its hold, the node is no longer rejoining (durably). */
  tick(): void {
    if (!this.#lost || this.#clearing || this.#cores.size === 0) return;
    for (const core of this.#cores) if (core.votesHeld() === 'leader-seen') return;
    this.#clearing = true;
    this.#o.identity.setRejoining(false).then(
      () => {
        this.#lost = false;
        this.#clearing = false;
      },
      (e: unknown) => {
        this.#clearing = false;
        const why = `recording that the node rejoined failed (${describe(e)}); it is retried on the next tick`;
        this.#o.report(new DiskFailedError(why, { cause: e }), 'raft node');
      },
    );
  }
}
