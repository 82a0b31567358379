/**
 * Key layout and record codecs of the resource-group protocol
 * (docs/protocol/groups.md). Everything read from the store is untrusted:
 * decoders return a typed record or throw CorruptDataError naming the key.
 */
import { intField, parseRecord, strField } from '../records.js';
import { CorruptDataError, InvalidArgumentError, LimitExceededError } from '../../errors.js';
import { isWellFormed, utf8Length } from '../../store/validate.js';
import { validateName, validateNodeId } from '../names.js';

export { validateNodeId };

export const MAX_RESOURCE_BYTES = 256;
/**
 * Resources one group may register. Measured (`npm run bench -- groups --sections scale`): 100 000 resources on 10
 * member processes converge on SQLite and Redis with event-loop stalls far below the session TTL. Above it, a
 * coordinator's full read and a node's share grow past what that bench has shown to be safe: split the resources
 * over several groups (by a hash of the name, for example).
 */
export const MAX_GROUP_RESOURCES = 100_000;

/** Refuse a registry that would grow past MAX_GROUP_RESOURCES, saying what to do. */
export function checkGroupSize(group: string, count: number): void {
  if (count > MAX_GROUP_RESOURCES) {
    throw new LimitExceededError(
      'resources per group',
      count,
      MAX_GROUP_RESOURCES,
      `group ${group} would have ${count} resources, above the limit of ${MAX_GROUP_RESOURCES} per group; nothing ` +
        'was registered. Split the resources over several groups (for example by a hash of the name) or remove some first',
    );
  }
}
export const PROTOCOL_VERSION = 1;

export function validateGroupName(name: string): string {
  return validateName(name, 'group name');
}

/** Resource names: any well-formed Unicode except NUL and control characters, 1–256 UTF-8 bytes. */
export function validateResourceName(name: string): string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new InvalidArgumentError('resource name must be a non-empty string');
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    throw new InvalidArgumentError(`resource name ${JSON.stringify(name)} contains control characters`);
  }
  if (!isWellFormed(name))
    throw new InvalidArgumentError(`resource name ${JSON.stringify(name)} is not well-formed Unicode`);
  const n = utf8Length(name);
  if (n > MAX_RESOURCE_BYTES) {
    throw new LimitExceededError(
      'resource name bytes',
      n,
      MAX_RESOURCE_BYTES,
      `resource name is ${n} UTF-8 bytes, above the limit of ${MAX_RESOURCE_BYTES}; use a shorter name or a hash of it`,
    );
  }
  return name;
}

/** The keys of one group. */
export class GroupKeys {
  readonly root: string;
  readonly members: string;
  readonly coordinator: string;
  readonly resources: string;
  readonly grants: string;
  readonly held: string;
  readonly acks: string;
  readonly state: string;
  /**
   * Rewritten in every transaction that changes `resources/`: its mod revision tells the coordinator
   * whether its cached resource list is still current without reading the whole list.
   */
  readonly catalog: string;

  constructor(group: string) {
    validateGroupName(group);
    this.root = `g/${group}/`;
    this.members = `${this.root}members/`;
    this.coordinator = `${this.root}coord/`;
    this.resources = `${this.root}resources/`;
    this.grants = `${this.root}grants/`;
    this.held = `${this.root}held/`;
    this.acks = `${this.root}acks/`;
    this.state = `${this.root}state`;
    this.catalog = `${this.root}catalog`;
  }

  member(nodeId: string): string {
    return this.members + nodeId;
  }
  resource(name: string): string {
    return this.resources + name;
  }
  grantsOf(nodeId: string): string {
    return `${this.grants}${nodeId}/`;
  }
  grant(nodeId: string, name: string): string {
    return `${this.grants}${nodeId}/${name}`;
  }
  heldKey(name: string): string {
    return this.held + name;
  }
  ack(nodeId: string): string {
    return this.acks + nodeId;
  }
  /** Split `grants/<node>/<name>` (relative to the grants prefix) into node and name. */
  parseGrantKey(key: string): { nodeId: string; name: string } | undefined {
    if (!key.startsWith(this.grants)) return undefined;
    const rest = key.slice(this.grants.length);
    const slash = rest.indexOf('/');
    if (slash <= 0) return undefined;
    return { nodeId: rest.slice(0, slash), name: rest.slice(slash + 1) };
  }
}

// ---- records ------------------------------------------------------------------

export type Protocol = 'resource-barrier' | 'global-barrier';
export const PROTOCOLS: readonly Protocol[] = ['resource-barrier', 'global-barrier'];

export interface MemberRecord {
  readonly nodeId: string;
  readonly zone: string;
  readonly weight: number;
  readonly sessionId: string;
  /** Static membership: keep this node's grants for a grace period after it disappears. */
  readonly static: boolean;
}

export interface StateRecord {
  readonly generation: number;
  readonly protocol: Protocol;
  readonly phase: 'running' | 'stopping';
  readonly coordinator: string;
  /** The coordinator's fencing token when it wrote this. */
  readonly token: number;
}

export interface GrantRecord {
  readonly generation: number;
}

export interface HeldRecord {
  readonly nodeId: string;
  readonly generation: number;
}

export interface AckRecord {
  readonly generation: number;
}

export function encode(record: object): string {
  return JSON.stringify({ v: PROTOCOL_VERSION, ...record });
}

function parse(key: string, value: string): Record<string, unknown> {
  return parseRecord(key, value, PROTOCOL_VERSION, 'protocol');
}

const int = intField;
const str = strField;

export function decodeMember(key: string, value: string): MemberRecord {
  const rec = parse(key, value);
  const weight = rec['weight'];
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) {
    throw new CorruptDataError(`${key}: weight must be a positive number`, { key });
  }
  return {
    nodeId: str(key, rec, 'nodeId'),
    zone: str(key, rec, 'zone'),
    weight,
    sessionId: str(key, rec, 'sessionId'),
    static: rec['static'] === true,
  };
}

export function decodeState(key: string, value: string): StateRecord {
  const rec = parse(key, value);
  const protocol = rec['protocol'];
  const phase = rec['phase'];
  if (protocol !== 'resource-barrier' && protocol !== 'global-barrier') {
    throw new CorruptDataError(`${key}: unknown protocol ${JSON.stringify(protocol)}`, { key });
  }
  if (phase !== 'running' && phase !== 'stopping') {
    throw new CorruptDataError(`${key}: unknown phase ${JSON.stringify(phase)}`, { key });
  }
  return {
    generation: int(key, rec, 'generation'),
    protocol,
    phase,
    coordinator: str(key, rec, 'coordinator'),
    token: int(key, rec, 'token'),
  };
}

export function decodeGrant(key: string, value: string): GrantRecord {
  return { generation: int(key, parse(key, value), 'generation') };
}

export function decodeHeld(key: string, value: string): HeldRecord {
  const rec = parse(key, value);
  return { nodeId: str(key, rec, 'nodeId'), generation: int(key, rec, 'generation') };
}

export function decodeAck(key: string, value: string): AckRecord {
  return { generation: int(key, parse(key, value), 'generation') };
}
