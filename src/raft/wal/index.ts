/** The node-wide durable log of Raft groups (docs/raft.md, "Durable log"). Does IO, unlike the core around it. */
export { SimDisk, type Disk } from './disk.js';
export { FsDisk } from './fs-disk.js';
export { GroupStorage, Wal, type Persist, type WalOptions, type WalStats } from './wal.js';
