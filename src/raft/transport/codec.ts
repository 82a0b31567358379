/**
 * The transport's wire format (docs/raft.md, "Transport"). Pure: no sockets, usable by a simulated network.
 *
 * A frame is `u32 length | u8 type | body` (big-endian length, counting the type byte and the body). The body of a
 * batch frame is `u32 count` followed by `count` envelopes; an envelope is a group id and one core message, written
 * field by field in a fixed order per message type (a schema codec: smaller and faster than a self-describing one,
 * and what the decoder accepts is exactly what the encoder writes). Entry payloads and snapshot bytes are carried
 * as raw bytes (a varint length, then the bytes). The decoder copies entry payloads out of the frame (a log keeps
 * them; a view would pin the whole socket read buffer it came in) and hands snapshot chunks back as views (the
 * frame is about the chunk's size, and the core copies the chunks once assembled).
 */
import { InvalidArgumentError, LimitExceededError, TransportFrameError } from '../../errors.js';
import type { Entry, EntryType, Membership, Message, MessageType, SnapshotMeta } from '../messages.js';

export const FrameType = {
  /** Dialer → acceptor: protocol version, cluster id, both node ids, the dialer's nonce. */
  hello: 1,
  /** Acceptor → dialer: its nonce and its proof (a MAC over both nonces). */
  helloAck: 2,
  /** Dialer → acceptor: the dialer's proof. */
  auth: 3,
  /** Messages, once authenticated. */
  batch: 4,
  /** A node-to-node request (RaftNode.request): its id and opaque payload bytes. Sent only to a peer that announced it. */
  request: 5,
  /** The answer to a request: its id, then the payload bytes or an error status with a code and a message. */
  response: 6,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];
const KNOWN_FRAME_TYPES = new Set<number>(Object.values(FrameType));

/** Bytes before a frame's body: the u32 length and the type byte. */
export const FRAME_HEADER_BYTES = 5;
/** Default largest frame accepted or sent (header included). */
export const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;

/**
 * The reserved group id of the features announcement: the first envelope of the first batch frame a node sends on a
 * connection, a `heartbeatResponse` whose `round` holds feature bits. Not a valid group name, so no group can have
 * it; a node of an older release delivers it to no group and drops it silently, and its first batch lacks it, which
 * tells this node that the peer serves no request frames (an unknown frame type closes an older node's connection).
 */
export const FEATURES_GROUP_ID = '\u0000features';
/** Feature bit: the node understands request and response frames. */
export const FEATURE_REQUESTS = 1;

/** One message of one group, as the transport carries it. */
export interface Envelope {
  readonly groupId: string;
  readonly message: Message;
}

export interface Frame {
  readonly type: FrameTypeCode;
  readonly body: Uint8Array;
}

const MESSAGE_TAGS: readonly MessageType[] = [
  'append',
  'appendResponse',
  'vote',
  'preVote',
  'voteResponse',
  'preVoteResponse',
  'heartbeat',
  'heartbeatResponse',
  'snapshot',
  'snapshotResponse',
  'propose',
  'readIndex',
  'readIndexResponse',
  'timeoutNow',
  'transfer',
];
const TAG_OF = new Map<MessageType, number>(MESSAGE_TAGS.map((t, i) => [t, i + 1]));

/** A growable byte writer. */
export class Writer {
  #buf: Buffer;
  #pos = 0;

  constructor(initialBytes = 256) {
    this.#buf = Buffer.allocUnsafe(initialBytes);
  }

  get length(): number {
    return this.#pos;
  }

  #room(n: number): void {
    if (this.#pos + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.#pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.#buf.copy(next, 0, 0, this.#pos);
    this.#buf = next;
  }

  u8(v: number): void {
    this.#room(1);
    this.#buf[this.#pos++] = v;
  }

  u32(v: number): void {
    this.#room(4);
    this.#buf.writeUInt32BE(v, this.#pos);
    this.#pos += 4;
  }

  /** A non-negative safe integer, 7 bits per byte (LEB128). */
  uint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) {
      throw new InvalidArgumentError(`raft transport: cannot encode ${String(v)}: not a non-negative safe integer`);
    }
    this.#room(8);
    while (v >= 0x80) {
      this.#buf[this.#pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.#buf[this.#pos++] = v;
  }

  bool(v: boolean): void {
    this.u8(v ? 1 : 0);
  }

  str(s: string): void {
    // Almost every string here is a short ASCII id (a group, a node): copied by hand, without a call into C++.
    const len = s.length;
    if (len < 0x80) {
      this.#room(1 + len);
      const buf = this.#buf;
      const at = this.#pos + 1;
      let i = 0;
      for (; i < len; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        buf[at + i] = c;
      }
      if (i === len) {
        buf[this.#pos] = len; // the length as a one-byte uint
        this.#pos = at + len;
        return;
      }
    }
    const n = Buffer.byteLength(s, 'utf8');
    this.uint(n);
    this.#room(n);
    this.#buf.write(s, this.#pos, n, 'utf8');
    this.#pos += n;
  }

  bytes(b: Uint8Array): void {
    this.uint(b.byteLength);
    this.#room(b.byteLength);
    this.#buf.set(b, this.#pos);
    this.#pos += b.byteLength;
  }

  /** The bytes written (a view: valid until the next write). */
  view(): Buffer {
    return this.#buf.subarray(0, this.#pos);
  }

  /** Write a u32 at `at` (patching a length written earlier). */
  patchU32(at: number, v: number): void {
    this.#buf.writeUInt32BE(v, at);
  }
}

/** Strings read (ASCII, up to MAX_INTERNED_CHARS) by a hash of their bytes: group and node ids repeat in every frame. */
const interned = new Map<number, string>();
const MAX_INTERNED = 4096;
const MAX_INTERNED_CHARS = 128;

/** A bounds-checked reader over one frame's body: any overrun or bad value is a TransportFrameError. */
export class Reader {
  readonly #buf: Uint8Array;
  /** The same bytes as a Buffer, for its UTF-8 decoding (no Buffer made per string). */
  readonly #b: Buffer;
  #pos = 0;
  readonly #view: DataView;

  constructor(buf: Uint8Array) {
    this.#buf = buf;
    this.#b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
    this.#view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  get remaining(): number {
    return this.#buf.byteLength - this.#pos;
  }

  #need(n: number): void {
    if (this.#pos + n > this.#buf.byteLength) throw new TransportFrameError('a field runs past the end of its frame');
  }

  u8(): number {
    this.#need(1);
    return this.#buf[this.#pos++]!;
  }

  u32(): number {
    this.#need(4);
    const v = this.#view.getUint32(this.#pos);
    this.#pos += 4;
    return v;
  }

  uint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      if (b < 0x80) {
        if (!Number.isSafeInteger(v)) break;
        return v;
      }
      mul *= 0x80;
    }
    throw new TransportFrameError('an integer field is not a safe non-negative integer');
  }

  bool(): boolean {
    const b = this.u8();
    if (b > 1) throw new TransportFrameError(`a boolean field holds ${b}`);
    return b === 1;
  }

  str(): string {
    const n = this.uint();
    this.#need(n);
    const at = this.#pos;
    this.#pos += n;
    if (n > MAX_INTERNED_CHARS) return this.#b.toString('utf8', at, at + n);
    // The same few ids arrive in every frame: found by a hash of their bytes, compared, and not decoded again.
    const buf = this.#buf;
    let h = n;
    for (let i = 0; i < n; i++) h = Math.imul(h ^ buf[at + i]!, 0x01000193);
    const known = interned.get(h);
    if (known !== undefined && known.length === n) {
      let i = 0;
      while (i < n && known.charCodeAt(i) === buf[at + i]) i++;
      if (i === n) return known;
    }
    const s = this.#b.toString('utf8', at, at + n);
    if (s.length === n) {
      // ASCII only (one char per byte, which the comparison above relies on); bounded, emptied when full.
      if (interned.size >= MAX_INTERNED) interned.clear();
      interned.set(h, s);
    }
    return s;
  }

  /** Raw bytes: a view of the frame (no copy). */
  bytes(): Uint8Array {
    const n = this.uint();
    this.#need(n);
    const b = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return b;
  }

  end(): void {
    if (this.remaining !== 0) throw new TransportFrameError(`${this.remaining} bytes left over at the end of a frame`);
  }
}

function writeEntryType(w: Writer, t: EntryType): void {
  w.u8(t === 'normal' ? 0 : 1);
}

function readEntryType(r: Reader): EntryType {
  const t = r.u8();
  if (t === 0) return 'normal';
  if (t === 1) return 'membership';
  throw new TransportFrameError(`unknown entry type ${t}`);
}

function writeMembership(w: Writer, m: Membership): void {
  w.uint(m.voters.length);
  for (const v of m.voters) w.str(v);
  w.uint(m.learners.length);
  for (const l of m.learners) w.str(l);
}

function readIds(r: Reader): string[] {
  const n = r.uint();
  if (n > r.remaining) throw new TransportFrameError('a list is longer than its frame');
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(r.str());
  return ids;
}

function readMembership(r: Reader): Membership {
  const voters = readIds(r);
  return { voters, learners: readIds(r) };
}

function writeMeta(w: Writer, m: SnapshotMeta): void {
  w.uint(m.index);
  w.uint(m.term);
  writeMembership(w, m.membership);
}

function readMeta(r: Reader): SnapshotMeta {
  const index = r.uint();
  const term = r.uint();
  return { index, term, membership: readMembership(r) };
}

/** Append one envelope to `w`. */
export function writeEnvelope(w: Writer, env: Envelope): void {
  const m = env.message;
  const tag = TAG_OF.get(m.type);
  if (tag === undefined) throw new InvalidArgumentError(`raft transport: unknown message type ${String(m.type)}`);
  w.str(env.groupId);
  w.u8(tag);
  w.str(m.from);
  w.str(m.to);
  w.uint(m.term);
  switch (m.type) {
    case 'append':
      w.uint(m.index);
      w.uint(m.logTerm);
      w.uint(m.commit);
      w.uint(m.entries.length);
      for (const e of m.entries) {
        w.uint(e.term);
        w.uint(e.index);
        writeEntryType(w, e.type);
        w.bytes(e.data);
      }
      return;
    case 'appendResponse':
      w.uint(m.index);
      w.bool(m.reject);
      w.uint(m.hintIndex);
      w.uint(m.hintTerm);
      return;
    case 'vote':
    case 'preVote':
      w.uint(m.index);
      w.uint(m.logTerm);
      w.bool(m.transfer);
      return;
    case 'voteResponse':
    case 'preVoteResponse':
      w.bool(m.reject);
      return;
    case 'heartbeat':
      w.uint(m.commit);
      w.uint(m.round);
      w.bool(m.quiesce);
      return;
    case 'heartbeatResponse':
      w.uint(m.round);
      return;
    case 'snapshot':
      writeMeta(w, m.meta);
      w.uint(m.offset);
      w.uint(m.totalBytes);
      w.bytes(m.data);
      return;
    case 'snapshotResponse':
      w.uint(m.index);
      w.uint(m.offset);
      w.bool(m.reject);
      return;
    case 'propose':
      w.uint(m.entries.length);
      for (const e of m.entries) {
        writeEntryType(w, e.type);
        w.bytes(e.data);
      }
      return;
    case 'readIndex':
      w.str(m.ctx);
      return;
    case 'readIndexResponse':
      w.str(m.ctx);
      w.uint(m.index);
      return;
    case 'timeoutNow':
      return;
    case 'transfer':
      w.str(m.target);
      return;
  }
}

/** Read one envelope from `r`. */
export function readEnvelope(r: Reader): Envelope {
  const groupId = r.str();
  const tag = r.u8();
  const type = MESSAGE_TAGS[tag - 1];
  if (type === undefined) throw new TransportFrameError(`unknown message tag ${tag}`);
  const from = r.str();
  const to = r.str();
  const term = r.uint();
  const base = { from, to, term };
  let message: Message;
  switch (type) {
    case 'append': {
      const index = r.uint();
      const logTerm = r.uint();
      const commit = r.uint();
      const n = r.uint();
      if (n > r.remaining) throw new TransportFrameError('an entry list is longer than its frame');
      const entries: Entry[] = [];
      for (let i = 0; i < n; i++) {
        const eTerm = r.uint();
        const eIndex = r.uint();
        const eType = readEntryType(r);
        entries.push({ term: eTerm, index: eIndex, type: eType, data: r.bytes().slice() });
      }
      message = { type, ...base, index, logTerm, commit, entries };
      break;
    }
    case 'appendResponse': {
      const index = r.uint();
      const reject = r.bool();
      const hintIndex = r.uint();
      message = { type, ...base, index, reject, hintIndex, hintTerm: r.uint() };
      break;
    }
    case 'vote':
    case 'preVote': {
      const index = r.uint();
      const logTerm = r.uint();
      message = { type, ...base, index, logTerm, transfer: r.bool() };
      break;
    }
    case 'voteResponse':
    case 'preVoteResponse':
      message = { type, ...base, reject: r.bool() };
      break;
    case 'heartbeat': {
      const commit = r.uint();
      const round = r.uint();
      message = { type, ...base, commit, round, quiesce: r.bool() };
      break;
    }
    case 'heartbeatResponse':
      message = { type, ...base, round: r.uint() };
      break;
    case 'snapshot': {
      const meta = readMeta(r);
      const offset = r.uint();
      const totalBytes = r.uint();
      message = { type, ...base, meta, offset, totalBytes, data: r.bytes() };
      break;
    }
    case 'snapshotResponse': {
      const index = r.uint();
      const offset = r.uint();
      message = { type, ...base, index, offset, reject: r.bool() };
      break;
    }
    case 'propose': {
      const n = r.uint();
      if (n > r.remaining) throw new TransportFrameError('a proposal list is longer than its frame');
      const entries: { type: EntryType; data: Uint8Array }[] = [];
      for (let i = 0; i < n; i++) {
        const eType = readEntryType(r);
        entries.push({ type: eType, data: r.bytes().slice() });
      }
      message = { type, ...base, entries };
      break;
    }
    case 'readIndex':
      message = { type, ...base, ctx: r.str() };
      break;
    case 'readIndexResponse': {
      const ctx = r.str();
      message = { type, ...base, ctx, index: r.uint() };
      break;
    }
    case 'timeoutNow':
      message = { type, ...base };
      break;
    case 'transfer':
      message = { type, ...base, target: r.str() };
      break;
  }
  return { groupId, message };
}

/** One envelope's bytes (what a per-peer queue holds and counts). */
export function encodeEnvelope(env: Envelope): Uint8Array {
  const w = new Writer(64 + approxPayload(env.message));
  writeEnvelope(w, env);
  // Not copied: the writer is dropped here, and a send queue keeps the bytes only until the frame is built.
  return w.view();
}

function approxPayload(m: Message): number {
  if (m.type === 'snapshot') return m.data.byteLength;
  if (m.type === 'append' || m.type === 'propose') {
    let n = 0;
    for (const e of m.entries) n += e.data.byteLength + 16;
    return n;
  }
  return 0;
}

/** A frame's header (length and type) for a body of `bodyBytes`, refusing a frame above `maxFrameBytes`. */
export function frameHeader(type: FrameTypeCode, bodyBytes: number, maxFrameBytes: number): Buffer {
  const total = FRAME_HEADER_BYTES + bodyBytes;
  if (total > maxFrameBytes) {
    throw new LimitExceededError(
      'raft transport frame bytes',
      total,
      maxFrameBytes,
      `a raft transport frame of ${total} bytes is above maxFrameBytes (${maxFrameBytes}): raise maxFrameBytes on ` +
        'every node, or lower the core’s maxMessageBytes and snapshotChunkBytes',
    );
  }
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt32BE(1 + bodyBytes, 0);
  h[4] = type;
  return h;
}

/** A whole frame in one buffer. */
export function encodeFrame(type: FrameTypeCode, body: Uint8Array, maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  return Buffer.concat([frameHeader(type, body.byteLength, maxFrameBytes), body]);
}

/** The body of a batch frame: the count, then the envelopes' bytes (as encodeEnvelope made them). */
export function batchBodyParts(encoded: readonly Uint8Array[]): Uint8Array[] {
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(encoded.length, 0);
  return [count, ...encoded];
}

/** A batch frame of envelopes, in one buffer. */
export function encodeBatch(envs: readonly Envelope[], maxFrameBytes = DEFAULT_MAX_FRAME_BYTES): Buffer {
  const parts = batchBodyParts(envs.map(encodeEnvelope));
  let n = 0;
  for (const p of parts) n += p.byteLength;
  return Buffer.concat([frameHeader(FrameType.batch, n, maxFrameBytes), ...parts]);
}

/** The envelopes of a batch frame's body. */
export function decodeBatch(body: Uint8Array): Envelope[] {
  const r = new Reader(body);
  const n = r.u32();
  if (n > r.remaining) throw new TransportFrameError(`a batch announces ${n} messages in ${r.remaining} bytes`);
  const out: Envelope[] = [];
  for (let i = 0; i < n; i++) out.push(readEnvelope(r));
  r.end();
  return out;
}

/**
 * Cuts a byte stream into frames: chunks may split a frame anywhere or hold many. A length below 1 or above
 * `maxFrameBytes`, or an unknown type, throws TransportFrameError (the connection must be closed: the stream cannot
 * be resynchronised); the decoder then refuses every further chunk.
 */
export class FrameDecoder {
  #maxFrameBytes: number;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #failed: TransportFrameError | undefined;

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {
    this.#maxFrameBytes = maxFrameBytes;
  }

  /** Change the largest frame accepted from now on (small during a handshake, the configured one after). */
  set maxFrameBytes(n: number) {
    this.#maxFrameBytes = n;
  }

  /** Bytes held waiting for the rest of a frame. */
  get buffered(): number {
    return this.#buffered;
  }

  /** Every whole frame the stream holds once `chunk` is added. */
  push(chunk: Uint8Array): Frame[] {
    this.write(chunk);
    const frames: Frame[] = [];
    for (let f = this.next(); f; f = this.next()) frames.push(f);
    return frames;
  }

  /** Add bytes received; take the frames with next() (one at a time: a frame may change the size limit). */
  write(chunk: Uint8Array): void {
    if (this.#failed) throw this.#failed;
    if (chunk.byteLength === 0) return;
    this.#chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    this.#buffered += chunk.byteLength;
  }

  /** The next whole frame, or undefined until more bytes come. */
  next(): Frame | undefined {
    if (this.#failed) throw this.#failed;
    if (this.#buffered < FRAME_HEADER_BYTES) return undefined;
    try {
      const head = this.#peek(FRAME_HEADER_BYTES);
      const len = head.readUInt32BE(0);
      if (len < 1 || len + 4 > this.#maxFrameBytes) {
        throw new TransportFrameError(`a frame announces ${len} bytes (at most ${this.#maxFrameBytes - 4} allowed)`);
      }
      const type = head[4]!;
      if (!KNOWN_FRAME_TYPES.has(type)) throw new TransportFrameError(`unknown frame type ${type}`);
      if (this.#buffered < 4 + len) return undefined;
      const whole = this.#take(4 + len);
      return { type: type as FrameTypeCode, body: whole.subarray(FRAME_HEADER_BYTES) };
    } catch (e) {
      this.#failed = e as TransportFrameError;
      this.#chunks = [];
      this.#buffered = 0;
      throw e;
    }
  }

  /** The first n buffered bytes, without consuming them. */
  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first;
    this.#chunks = [Buffer.concat(this.#chunks)];
    return this.#chunks[0]!;
  }

  /** Consume the first n buffered bytes. */
  #take(n: number): Buffer {
    let first = this.#chunks[0]!;
    if (first.length < n) {
      // Join only as many chunks as the frame needs.
      let have = 0;
      let k = 0;
      while (have < n) have += this.#chunks[k++]!.length;
      first = Buffer.concat(this.#chunks.slice(0, k), have);
      this.#chunks.splice(0, k, first);
    }
    const out = first.subarray(0, n);
    if (first.length === n) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    return out;
  }
}

// ---- requests between nodes --------------------------------------------------------------------------------------

/** Bytes of a request frame besides its payload (header, id and payload length varints, at most). */
export const REQUEST_OVERHEAD_BYTES = FRAME_HEADER_BYTES + 8 + 8;

/** How a request ended at the peer. */
export const ResponseStatus = {
  ok: 0,
  /** The handler threw: a code and a message follow. */
  failed: 1,
  /** The peer has no request handler (yet). */
  noHandler: 2,
  /** The peer already runs as many of this node's requests as it allows. */
  busy: 3,
  /** The handler's answer did not fit in a frame. */
  tooLarge: 4,
} as const;
export type ResponseStatusCode = (typeof ResponseStatus)[keyof typeof ResponseStatus];

export type Response =
  | { readonly id: number; readonly status: typeof ResponseStatus.ok; readonly payload: Uint8Array }
  | {
      readonly id: number;
      readonly status: Exclude<ResponseStatusCode, typeof ResponseStatus.ok>;
      readonly code: string;
      readonly message: string;
    };

export function encodeRequestBody(id: number, payload: Uint8Array): Uint8Array {
  const w = new Writer(16 + payload.byteLength);
  w.uint(id);
  w.bytes(payload);
  return new Uint8Array(w.view());
}

/** A request frame's body; the payload is copied out (the handler may keep it past the read buffer's life). */
export function decodeRequestBody(body: Uint8Array): { readonly id: number; readonly payload: Uint8Array } {
  const r = new Reader(body);
  const id = r.uint();
  const payload = r.bytes().slice();
  r.end();
  return { id, payload };
}

export function encodeResponseBody(res: Response): Uint8Array {
  const w = new Writer(res.status === ResponseStatus.ok ? 16 + res.payload.byteLength : 256);
  w.uint(res.id);
  w.u8(res.status);
  if (res.status === ResponseStatus.ok) w.bytes(res.payload);
  else {
    w.str(res.code);
    w.str(res.message);
  }
  return new Uint8Array(w.view());
}

export function decodeResponseBody(body: Uint8Array): Response {
  const r = new Reader(body);
  const id = r.uint();
  const status = r.u8();
  let res: Response;
  if (status === ResponseStatus.ok) res = { id, status, payload: r.bytes().slice() };
  else if (status >= ResponseStatus.failed && status <= ResponseStatus.tooLarge) {
    const code = r.str();
    res = { id, status: status as Exclude<ResponseStatusCode, 0>, code, message: r.str() };
  } else throw new TransportFrameError(`unknown response status ${status}`);
  r.end();
  return res;
}
