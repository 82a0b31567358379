/** CPU time of a process by pid, for the raft bench's servers' CPU columns (Linux /proc). */
import { readFileSync } from 'node:fs';

/** CPU time (user + system, ms) that a live process has used, from /proc/<pid>/stat; undefined if it is gone. */
export function processCpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Fields after the last ')' (comm may contain anything): utime and stime are fields 14 and 15, in clock ticks.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(rest[11]) + Number(rest[12]);
  return Number.isFinite(ticks) ? (ticks * 1000) / CLOCK_TICKS_PER_SECOND : undefined;
}

/** USER_HZ: 100 on every Linux architecture Node runs on (the kernel reports ticks in it whatever its own HZ). */
const CLOCK_TICKS_PER_SECOND = 100;
