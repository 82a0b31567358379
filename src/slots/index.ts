/**
 * `rebalancer/slots`: sharding with replication and request routing — a fixed
 * number of slots on sites, R replicas each, one fenced primary per slot, an
 * application-driven migration handshake and a local routing table
 * (docs/protocol/slots.md, docs/slots.md).
 */
export {
  joinSlots,
  SlotSite,
  ReleaseRefusedError,
  type PrimaryLostReason,
  type SlotRoute,
  type SlotsEvents,
  type SlotsOptions,
} from '../runtime/slots-site.js';
export type { LocalSlotState } from '../protocol/slots/site.js';
export { slotForKey, keyHash16, crc16, DEFAULT_SLOT_COUNT, MAX_SLOT_COUNT } from '../placement/slot-hash.js';
export {
  computeSlotPlacement,
  planTransition,
  slotReplicas,
  slotPrimary,
  siteLoads,
  type SlotPlacement,
  type SlotPlacementInput,
  type SlotSite as SlotPlacementSite,
  type TransitionPlan,
} from '../placement/slots.js';
export { RoutingTable, type SiteRoute, type SiteAddresses } from '../placement/routing.js';
