/**
 * `rebalancer/slots`: sharding with replication and request routing — a fixed
 * number of slots on nodes, R replicas each, one fenced primary per slot, an
 * application-driven migration handshake and a local routing table
 * (docs/protocol/slots.md, docs/slots.md). Everything about slots is
 * exported from here, the pure parts (key hash, placement, routing table)
 * included.
 */
export { joinSlots, SlotsMember, type PrimaryLostReason, type SlotsEvents } from '../runtime/slots/member.js';
export type { JoinSlotsOptions } from '../runtime/slots/options.js';
export type { MarkReadyResult, ReleaseResult } from '../runtime/slots/ready.js';
export type { NodeOptions, LeaseOptions } from '../runtime/common-options.js';
export type { ErrorEvent } from '../events.js';
export type { LocalSlotState, ReleaseRefusal } from '../protocol/slots/site.js';
export { slotForKey, keyHash16, crc16, DEFAULT_SLOT_COUNT, MAX_SLOT_COUNT } from '../placement/slot-hash.js';
export {
  computeSlotPlacement,
  planTransition,
  slotReplicas,
  slotPrimary,
  siteLoads,
  type SiteLoad,
  type SlotChange,
  type SlotPlacement,
  type SlotPlacementInput,
  type TransitionPlan,
} from '../placement/slots.js';
export {
  RoutingTable,
  type NodeAddresses,
  type NodeRoute,
  type PrimaryRoute,
  type SlotRoute,
} from '../placement/routing.js';
export { NodeIdInUseError } from '../errors.js';
