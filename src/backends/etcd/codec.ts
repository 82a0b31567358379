/**
 * Key layout and conversions between the contract's types and etcd's.
 *
 * Layout under one namespace `<ns>`:
 *   rebalancer/<ns>/layout   "1" — the layout version this build understands
 *   rebalancer/<ns>/k/<key>  the contract's keys, value as UTF-8 bytes
 * Keeping data under `k/` keeps the layout key out of every range read.
 */
import type { ICompare, IKeyValue, IRequestOp } from 'etcd3';
import { CorruptDataError, InvalidArgumentError } from '../../errors.js';
import type { Compare, KeyValue, Op } from '../../store/contract.js';
import { decodeUtf8 } from '../../store/validate.js';

export const LAYOUT_VERSION = 1;
export const ROOT_PREFIX = 'rebalancer/';

/** Lease ids travel as signed 64-bit decimal strings; sessions show them in hex, as etcdctl prints them. */
export function leaseToSessionId(lease: string): string {
  return BigInt.asUintN(64, BigInt(lease)).toString(16);
}

/** Exclusive end of the range of keys starting with `prefix` (etcd's rule: bump the last byte that is not 0xff). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  // All 0xff (cannot happen under our ASCII root): "to the end of the keyspace".
  return Buffer.from([0]);
}

function jsOrder(a: KeyValue, b: KeyValue): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

export class KeySpace {
  /** `rebalancer/<ns>/` */
  readonly root: string;
  readonly layoutKey: Buffer;
  readonly #data: Buffer;

  constructor(namespace: string) {
    this.root = `${ROOT_PREFIX}${namespace}/`;
    this.layoutKey = Buffer.from(`${this.root}layout`, 'utf8');
    this.#data = Buffer.from(`${this.root}k/`, 'utf8');
  }

  key(key: string): Buffer {
    return Buffer.concat([this.#data, Buffer.from(key, 'utf8')]);
  }

  range(prefix: string): { key: Buffer; range_end: Buffer } {
    const key = this.key(prefix);
    return { key, range_end: prefixEnd(key) };
  }

  /** The contract key of an etcd key read back; throws CorruptDataError when it is not one of ours. */
  decodeKey(raw: Buffer): string {
    if (raw.length <= this.#data.length || !raw.subarray(0, this.#data.length).equals(this.#data)) {
      throw new CorruptDataError(
        `etcd returned key ${JSON.stringify(raw.toString('latin1'))} outside the namespace data prefix ${this.#data.toString()}`,
      );
    }
    return decodeUtf8(raw.subarray(this.#data.length), 'a key');
  }

  toKeyValue(kv: IKeyValue): KeyValue {
    const key = this.decodeKey(kv.key);
    const num = (field: string, s: string): number => {
      const n = Number(s);
      if (!Number.isSafeInteger(n) || n < 0) {
        throw new CorruptDataError(`etcd returned ${field} ${JSON.stringify(s)} for ${key}`, { key });
      }
      return n;
    };
    return {
      key,
      value: decodeUtf8(kv.value, 'value', key),
      version: num('version', kv.version),
      createRevision: num('create_revision', kv.create_revision),
      modRevision: num('mod_revision', kv.mod_revision),
      sessionId: kv.lease === '0' || kv.lease === '' ? undefined : leaseToSessionId(kv.lease),
    };
  }

  /** Decode and sort by JS string order (etcd sorts by bytes, which differs above U+FFFF). */
  toKeyValues(kvs: readonly IKeyValue[]): KeyValue[] {
    return kvs.map((kv) => this.toKeyValue(kv)).sort(jsOrder);
  }

  compare(c: Compare): ICompare {
    const key = this.key(c.key);
    switch (c.target) {
      case 'exists':
        return { key, target: 'Version', result: c.exists ? 'Greater' : 'Equal', version: 0 };
      case 'value':
        return {
          key,
          target: 'Value',
          result: c.op === '=' ? 'Equal' : 'NotEqual',
          value: Buffer.from(c.value, 'utf8'),
        };
      case 'version':
        return { key, target: 'Version', result: RESULT[c.op], version: c.value };
      case 'createRevision':
        return { key, target: 'Create', result: RESULT[c.op], create_revision: c.value };
      case 'modRevision':
        return { key, target: 'Mod', result: RESULT[c.op], mod_revision: c.value };
      default:
        throw new InvalidArgumentError(`unknown compare target ${JSON.stringify((c as { target: unknown }).target)}`);
    }
  }

  /** `lease` is the etcd lease of the op's session (resolved by the caller), or undefined. */
  op(op: Op, lease: string | undefined): IRequestOp {
    switch (op.op) {
      case 'put':
        // lease 0 detaches the key from any lease, as the contract wants for a put without a session.
        return { request_put: { key: this.key(op.key), value: Buffer.from(op.value, 'utf8'), lease: lease ?? 0 } };
      case 'delete':
        return { request_delete_range: { key: this.key(op.key) } };
      case 'deletePrefix':
        return { request_delete_range: this.range(op.prefix) };
      case 'get':
        return { request_range: { key: this.key(op.key) } };
      case 'range':
        return { request_range: this.range(op.prefix) };
      default:
        throw new InvalidArgumentError(`unknown txn op ${JSON.stringify((op as { op: unknown }).op)}`);
    }
  }
}

const RESULT = { '=': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;
