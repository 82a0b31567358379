/**
 * `rebalancer/groups`: resource groups — Kafka-style consumer groups for
 * anything. Each registered resource runs on exactly one live node of the
 * group, under a lock whose fencing token grows with every new owner; a node
 * that cannot renew its session stops its handlers before its lease can
 * expire (docs/protocol/groups.md).
 */
export { joinGroup, GroupMember, type AssignedResource, type GroupEvents } from '../runtime/groups/member.js';
export type { JoinGroupOptions, ResourceContext, ResourceHandler, ResourceSource } from '../runtime/groups/options.js';
export type { NodeOptions, LeaseOptions } from '../runtime/common-options.js';
export type { ErrorEvent } from '../events.js';
export { GroupAdmin, listGroups, type RegistryChangeOptions } from '../runtime/groups/registry.js';
export { groupStatus } from '../runtime/groups/status.js';
export type {
  CorruptionProblem,
  GroupStatus,
  NodeStatus,
  ResourceState,
  ResourceStatus,
} from '../runtime/groups/status.js';
export { repairGroup, type RepairStep } from '../runtime/groups/repair.js';
export { MAX_GROUP_RESOURCES, type Protocol } from '../protocol/groups/keys.js';
export type { StopReason } from '../protocol/groups/member.js';
export { CorruptDataError, GroupNotFoundError, NodeIdInUseError, RevokedError } from '../errors.js';
