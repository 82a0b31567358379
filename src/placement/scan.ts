/**
 * The SIMD scan of slot placement (scan.wat): for one slot, which sites' rendezvous hashes pass their gates.
 * Used by rankReplicas when WebAssembly SIMD is available; the JavaScript path gives the same result and is used
 * otherwise (and by the tests, to compare both).
 */
import { SCAN_WASM_BASE64 } from './scan-wasm.js';

// The TypeScript libraries this project uses (ES2022, no DOM) do not declare WebAssembly: the little used here.
interface WasmMemory {
  readonly buffer: ArrayBuffer;
  grow(pages: number): number;
}
interface WasmModule {
  readonly __wasmModule?: never;
}
interface WasmApi {
  validate(bytes: Uint8Array): boolean;
  readonly Module: new (bytes: Uint8Array) => WasmModule;
  readonly Instance: new (module: WasmModule) => { readonly exports: unknown };
}
const wasm = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;

interface ScanExports {
  readonly memory: WasmMemory;
  scan(h: number, vectors: number, mix: number, gate: number, idx: number, val: number): number;
}

let compiled: WasmModule | null | undefined;
let enabled = true;

/** Tests: run placement on the JavaScript path only (false) or with SIMD where available (true, the default). */
export function setPlacementSimd(on: boolean): void {
  enabled = on;
}

function simdModule(): WasmModule | null {
  if (compiled === undefined) {
    compiled = null;
    try {
      const bytes = Buffer.from(SCAN_WASM_BASE64, 'base64');
      // A runtime without WebAssembly or without SIMD rejects the module: placement stays on the JavaScript path.
      if (wasm?.validate(bytes) === true) compiled = new wasm.Module(bytes);
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

const PATTERN_BYTES = 256;
const INT32_MAX = 2147483647;

/** One placement's scanner: the sites' hash halves and gates are loaded once, then `scan(h)` per slot. */
export class SiteScanner {
  /** After scan(): the passing sites' indices and signed-order hashes, `count` of each. */
  idx: Int32Array;
  val: Int32Array;
  readonly #exports: ScanExports;
  readonly #vectors: number;
  readonly #mix: number;
  readonly #gate: number;
  readonly #idx: number;
  readonly #val: number;

  private constructor(exports: ScanExports, mix: Int32Array, gate: Int32Array) {
    this.#exports = exports;
    const padded = Math.ceil(mix.length / 4) * 4;
    this.#vectors = padded / 4;
    this.#mix = PATTERN_BYTES;
    this.#gate = this.#mix + padded * 4;
    this.#idx = this.#gate + padded * 4;
    this.#val = this.#idx + padded * 4 + 16;
    const end = this.#val + padded * 4 + 16;
    const memory = exports.memory;
    if (end > memory.buffer.byteLength) memory.grow(Math.ceil((end - memory.buffer.byteLength) / 65536));
    const words = new Int32Array(memory.buffer);
    words.set(mix, this.#mix / 4);
    words.set(gate, this.#gate / 4);
    // Padding lanes: nothing is above 2^31 - 1, so they never pass.
    words.fill(INT32_MAX, this.#gate / 4 + mix.length, this.#gate / 4 + padded);
    this.idx = new Int32Array(memory.buffer, this.#idx, padded + 4);
    this.val = new Int32Array(memory.buffer, this.#val, padded + 4);
  }

  /**
   * A scanner for sites with hash halves `mix` (imul(hash32(id), 0x9e3779b1)) and gates (a site passes when its
   * signed-order hash is strictly above its gate), or undefined where WebAssembly SIMD is not available.
   */
  static create(mix: Int32Array, gate: Int32Array): SiteScanner | undefined {
    const module = enabled ? simdModule() : null;
    if (module === null || wasm === undefined) return undefined;
    const instance = new wasm.Instance(module);
    return new SiteScanner(instance.exports as unknown as ScanExports, mix, gate);
  }

  /** Scan every site for the slot with rendezvous key `h`; returns how many passed (see idx, val). */
  scan(h: number): number {
    return this.#exports.scan(h | 0, this.#vectors, this.#mix, this.#gate, this.#idx, this.#val);
  }
}
