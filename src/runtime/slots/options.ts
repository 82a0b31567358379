/**
 * Options of a slots member, read and checked by the same code as every
 * other runtime's (../common-options.ts): unknown options are refused by
 * name, values out of range with their range.
 */
import { OptionReader } from '../../options.js';
import { DEFAULT_SLOT_COUNT } from '../../placement/slot-hash.js';
import { validateSlotsConfig, type SlotsConfig } from '../../protocol/slots/keys.js';
import { validateName } from '../../protocol/names.js';
import { readMember, type MemberOptions, type ResolvedMemberOptions } from '../common-options.js';

/** `node.address` is what the routing table publishes for this node. */
export interface JoinSlotsOptions extends MemberOptions {
  /** Cluster name (like a group name): 1–64 of A-Z a-z 0-9 . _ - */
  readonly cluster: string;
  /** Fixed for the cluster's life (default 16384, at most 65536); every node must agree. */
  readonly slotCount?: number | undefined;
  /** Replicas per slot, R (default 3); every node must agree. */
  readonly replicas?: number | undefined;
  /** No slot is placed while fewer nodes are live (default 1); every node must agree. */
  readonly minNodes?: number | undefined;
  /**
   * How long leave() waits for the new replicas and the application's releases (default 60 000 ms); it stops
   * waiting at once when no live node is left to take the slots (the whole cluster is shutting down).
   */
  readonly leaveTimeoutMs?: number | undefined;
}

export interface ResolvedSlotsOptions extends ResolvedMemberOptions {
  readonly cluster: string;
  readonly config: SlotsConfig;
  readonly leaveTimeoutMs: number;
}

export function resolveSlotsOptions(options: unknown): ResolvedSlotsOptions {
  const r = new OptionReader(options, 'joinSlots options');
  r.renamed('site', 'node');
  r.renamed('minSites', 'minNodes');
  const member = readMember(r);
  const cluster = validateName(r.raw('cluster'), 'cluster name');
  const config = validateSlotsConfig({
    slotCount: r.integer('slotCount', DEFAULT_SLOT_COUNT, { min: 1, max: 65_536 }),
    replicas: r.integer('replicas', 3, { min: 1 }),
    minSites: r.integer('minNodes', 1, { min: 1, max: 65_535 }),
  });
  const leaveTimeoutMs = r.ms('leaveTimeoutMs', 60_000);
  r.done();
  return { ...member, cluster, config, leaveTimeoutMs };
}
