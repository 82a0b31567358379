/**
 * A node's identity file (docs/raft.md, "A node that lost its data"): the incarnation of its data directory (128
 * random bits made with it), the incarnation it last saw of each peer, and whether it is rejoining after a loss of
 * its data. Written atomically through the node's Disk (temp, sync, rename, sync the directory), so the simulated
 * disk's crashes apply to it too. Format: `u32 magic "RIDN" · u32 crc32(rest) · JSON (UTF-8)`.
 */
import { CorruptLogError, invariant } from '../../errors.js';
import { INCARNATION_BYTES } from '../transport/handshake.js';
import { zlib32 } from '../wal/crc.js';
import type { Disk } from '../wal/disk.js';

export const IDENTITY_FILE = 'node-identity';
const TEMP = `${IDENTITY_FILE}.tmp`;
const MAGIC = 0x4e444952; // "RIDN" little-endian
const HEX = /^[0-9a-f]{32}$/;

interface Stored {
  readonly v: 1;
  readonly incarnation: string;
  readonly peers: Record<string, string>;
  readonly rejoining: boolean;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

function encode(s: Stored): Uint8Array {
  const json = Buffer.from(JSON.stringify(s), 'utf8');
  const out = new Uint8Array(8 + json.byteLength);
  out.set(json, 8);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC, true);
  v.setUint32(4, zlib32(out.subarray(8)), true);
  return out;
}

function decode(bytes: Uint8Array): Stored | string {
  if (bytes.byteLength < 8) return 'shorter than its header';
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, true) !== MAGIC) return 'a bad magic number';
  if (zlib32(bytes.subarray(8)) !== v.getUint32(4, true)) return 'a checksum mismatch';
  try {
    const s = JSON.parse(Buffer.from(bytes.subarray(8)).toString('utf8')) as Stored;
    const ok =
      s.v === 1 &&
      HEX.test(s.incarnation) &&
      typeof s.rejoining === 'boolean' &&
      s.peers !== null &&
      typeof s.peers === 'object' &&
      Object.values(s.peers).every((p) => typeof p === 'string' && HEX.test(p));
    return ok ? s : 'unexpected content';
  } catch (e) {
    return `unreadable JSON (${(e as Error).message})`;
  }
}

export class NodeIdentity {
  readonly incarnation: Uint8Array;
  /** True when this start made the incarnation: the data directory is new (a first start, or a wiped one). */
  readonly created: boolean;
  readonly #disk: Disk;
  readonly #peers: Map<string, Uint8Array>;
  #rejoining: boolean;
  /** Writes one after another; each writes the state as it is then. */
  #writing: Promise<void> = Promise.resolve();

  private constructor(disk: Disk, s: Stored, created: boolean) {
    this.#disk = disk;
    this.incarnation = unhex(s.incarnation);
    this.#peers = new Map(Object.entries(s.peers).map(([k, v]) => [k, unhex(v)]));
    this.#rejoining = s.rejoining;
    this.created = created;
  }

  /**
   * Read the identity on `disk`, or make a new one (durably, before this returns) when there is none. `random`
   * gives the new incarnation's bytes. A file that exists but cannot be read is refused: guessing would let the
   * node vote as if it had never voted.
   */
  static async open(disk: Disk, random: () => Uint8Array): Promise<NodeIdentity> {
    const names = await disk.list();
    if (names.includes(IDENTITY_FILE)) {
      const s = decode(await disk.read(IDENTITY_FILE));
      if (typeof s === 'string') {
        throw new CorruptLogError(
          IDENTITY_FILE,
          0,
          `the raft node identity file (${IDENTITY_FILE}) has ${s}. Restore it from a backup, or delete the whole ` +
            'data directory: the node then rejoins as one that lost its data',
        );
      }
      return new NodeIdentity(disk, s, false);
    }
    const incarnation = random();
    invariant(incarnation.byteLength === INCARNATION_BYTES, 'an incarnation is 16 bytes');
    const id = new NodeIdentity(disk, { v: 1, incarnation: hex(incarnation), peers: {}, rejoining: false }, true);
    await id.#write();
    return id;
  }

  /** The incarnation under which this node last saw `peer`, if ever. */
  known(peer: string): Uint8Array | undefined {
    return this.#peers.get(peer);
  }

  /** Whether this node lost its data and some replica may still be holding its votes (survives restarts). */
  get rejoining(): boolean {
    return this.#rejoining;
  }

  /** Remember (durably, before this resolves) that `peer` is now `incarnation`. */
  async recordPeer(peer: string, incarnation: Uint8Array): Promise<void> {
    const known = this.#peers.get(peer);
    if (known !== undefined && Buffer.compare(known, incarnation) === 0) return this.#writing;
    this.#peers.set(peer, new Uint8Array(incarnation));
    return this.#write();
  }

  async setRejoining(rejoining: boolean): Promise<void> {
    if (this.#rejoining === rejoining) return this.#writing;
    this.#rejoining = rejoining;
    return this.#write();
  }

  #write(): Promise<void> {
    const next = this.#writing.then(async () => {
      const bytes = encode({
        v: 1,
        incarnation: hex(this.incarnation),
        peers: Object.fromEntries([...this.#peers].map(([k, v]) => [k, hex(v)])),
        rejoining: this.#rejoining,
      });
      if ((await this.#disk.list()).includes(TEMP)) await this.#disk.unlink(TEMP);
      await this.#disk.append(TEMP, bytes);
      await this.#disk.sync(TEMP);
      await this.#disk.rename(TEMP, IDENTITY_FILE);
      await this.#disk.syncDir();
    });
    // A failed write fails its callers; the next write tries again.
    this.#writing = next.catch(() => undefined);
    return next;
  }
}
