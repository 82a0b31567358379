/**
 * The bodies of the three handshake frames (docs/raft.md, "Transport"), strict like the rest of the codec: every
 * field in a fixed order, lengths checked, nothing left over. Version 2 added the incarnations: each side says
 * which incarnation of its data directory it is, and which incarnation it last knew of the other (none: never
 * seen), so that a node whose data was lost learns it from its peers (docs/raft.md, "A node that lost its data").
 * The proofs (auth.ts) cover every one of these fields.
 */
import { PeerAuthError, TransportFrameError } from '../../errors.js';
import { Reader, Writer } from './codec.js';

/** The handshake's version: a peer speaking another one is refused with a message saying so. */
export const PROTOCOL_VERSION = 2;
export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
/** A node's incarnation: 128 random bits made with its data directory. */
export const INCARNATION_BYTES = 16;

/** Dialer → acceptor. */
export interface Hello {
  readonly clusterId: string;
  readonly from: string;
  readonly to: string;
  readonly nonce: Uint8Array;
  /** The dialer's incarnation. */
  readonly incarnation: Uint8Array;
  /** The incarnation the dialer last knew of the acceptor; undefined when it never saw it. */
  readonly knownIncarnation: Uint8Array | undefined;
}

/** Acceptor → dialer: the acceptor's side of the same, and its proof. */
export interface HelloAck {
  readonly nonce: Uint8Array;
  readonly incarnation: Uint8Array;
  readonly knownIncarnation: Uint8Array | undefined;
  readonly mac: Uint8Array;
}

function writeKnown(w: Writer, known: Uint8Array | undefined): void {
  w.bytes(known ?? new Uint8Array(0));
}

/** A fixed-size field, copied out of the frame (the link keeps it past the read buffer's life). */
function fixed(r: Reader, bytes: number, what: string): Uint8Array {
  const b = r.bytes();
  if (b.byteLength !== bytes) throw new TransportFrameError(`${what} of ${b.byteLength} bytes (expected ${bytes})`);
  return new Uint8Array(b);
}

function readKnown(r: Reader): Uint8Array | undefined {
  const b = r.bytes();
  if (b.byteLength === 0) return undefined;
  if (b.byteLength !== INCARNATION_BYTES) {
    throw new TransportFrameError(`a known incarnation of ${b.byteLength} bytes (expected 0 or ${INCARNATION_BYTES})`);
  }
  return new Uint8Array(b);
}

export function encodeHello(h: Hello): Uint8Array {
  const w = new Writer();
  w.u8(PROTOCOL_VERSION);
  w.str(h.clusterId);
  w.str(h.from);
  w.str(h.to);
  w.bytes(h.nonce);
  w.bytes(h.incarnation);
  writeKnown(w, h.knownIncarnation);
  return w.view();
}

/**
 * A hello's body. The version comes first and is checked first: a peer of another version is told so (a
 * PeerAuthError naming `who`), not that its frame is malformed.
 */
export function decodeHello(body: Uint8Array, who: string): Hello {
  const r = new Reader(body);
  const version = r.u8();
  if (version !== PROTOCOL_VERSION) {
    throw new PeerAuthError(
      who,
      `it speaks handshake version ${version}, this node ${PROTOCOL_VERSION}: run the same release on every node`,
    );
  }
  const clusterId = r.str();
  const from = r.str();
  const to = r.str();
  const nonce = fixed(r, NONCE_BYTES, 'a nonce');
  const incarnation = fixed(r, INCARNATION_BYTES, 'an incarnation');
  const knownIncarnation = readKnown(r);
  r.end();
  return { clusterId, from, to, nonce, incarnation, knownIncarnation };
}

export function encodeHelloAck(a: HelloAck): Uint8Array {
  const w = new Writer();
  w.bytes(a.nonce);
  w.bytes(a.incarnation);
  writeKnown(w, a.knownIncarnation);
  w.bytes(a.mac);
  return w.view();
}

export function decodeHelloAck(body: Uint8Array): HelloAck {
  const r = new Reader(body);
  const nonce = fixed(r, NONCE_BYTES, 'a nonce');
  const incarnation = fixed(r, INCARNATION_BYTES, 'an incarnation');
  const knownIncarnation = readKnown(r);
  const mac = fixed(r, MAC_BYTES, 'a proof');
  r.end();
  return { nonce, incarnation, knownIncarnation, mac };
}

export function encodeAuth(mac: Uint8Array): Uint8Array {
  const w = new Writer();
  w.bytes(mac);
  return w.view();
}

export function decodeAuth(body: Uint8Array): Uint8Array {
  const r = new Reader(body);
  const mac = fixed(r, MAC_BYTES, 'a proof');
  r.end();
  return mac;
}
