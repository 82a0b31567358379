/** The real Disk: one directory on the local file system (node:fs). */
import { mkdir, open, readdir, readFile, rename, truncate, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Disk } from './disk.js';

export class FsDisk implements Disk {
  readonly dir: string;
  readonly #open = new Map<string, FileHandle>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** The disk on `dir`, created when missing. */
  static async open(dir: string): Promise<FsDisk> {
    await mkdir(dir, { recursive: true });
    return new FsDisk(dir);
  }

  async #handle(name: string): Promise<FileHandle> {
    let h = this.#open.get(name);
    if (h === undefined) {
      h = await open(join(this.dir, name), 'a');
      this.#open.set(name, h);
    }
    return h;
  }

  async #forget(name: string): Promise<void> {
    const h = this.#open.get(name);
    if (h !== undefined) {
      this.#open.delete(name);
      await h.close();
    }
  }

  async list(): Promise<string[]> {
    return (await readdir(this.dir)).sort();
  }

  async read(name: string): Promise<Uint8Array> {
    const b = await readFile(join(this.dir, name));
    return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }

  async append(name: string, data: Uint8Array): Promise<void> {
    const h = await this.#handle(name);
    let at = 0;
    while (at < data.byteLength) {
      const { bytesWritten } = await h.write(data, at, data.byteLength - at);
      at += bytesWritten;
    }
  }

  async sync(name: string): Promise<void> {
    await (await this.#handle(name)).datasync();
  }

  async truncate(name: string, size: number): Promise<void> {
    await this.#forget(name);
    await truncate(join(this.dir, name), size);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.#forget(from);
    await this.#forget(to);
    await rename(join(this.dir, from), join(this.dir, to));
  }

  async unlink(name: string): Promise<void> {
    await this.#forget(name);
    await unlink(join(this.dir, name));
  }

  async syncDir(): Promise<void> {
    const h = await open(this.dir, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  }

  async close(): Promise<void> {
    const all = [...this.#open.keys()];
    for (const name of all) await this.#forget(name);
  }
}
