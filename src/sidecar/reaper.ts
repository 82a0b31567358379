/**
 * The reaper: what stops the sidecar's children when the sidecar itself dies
 * without a chance to stop them (kill -9, an OOM kill, a crash in native
 * code).
 *
 * Children run in their own process groups (so that a signal reaches
 * everything they start), which also means that nothing kills them when the
 * sidecar dies, and Node cannot set PR_SET_PDEATHSIG. So the sidecar starts
 * one small POSIX shell process, in a process group of its own, whose
 * standard input is a pipe from the sidecar. The sidecar writes `+PGID` when
 * a child's group starts and `-PGID` once that group is empty. The kernel
 * closes the pipe when the sidecar exits, however it exits; the reaper then
 * reads end-of-file and, if any group is still listed, sends it SIGTERM,
 * waits up to its grace period for the groups to empty, then sends SIGKILL.
 *
 * What it does not cover: a sidecar that is paused (SIGSTOP, a stalled VM)
 * keeps its pipe open, so its children keep running while its session may
 * expire; a child that leaves its process group (setsid) escapes every
 * signal; and a process in uninterruptible sleep outlives even SIGKILL for a
 * while. In those cases only the fencing token protects the resource.
 */
import { spawn, type ChildProcess } from 'node:child_process';

/**
 * $1: grace in tenths of a second. Reads `+PGID` / `-PGID` lines; at
 * end-of-file terminates whatever is still listed. `kill -0 -PGID` succeeds
 * while any process (also a zombie not yet reaped by init) is in the group.
 */
const SCRIPT = `# rebalancer sidecar reaper: stops the children listed on stdin when the sidecar is gone
trap '' INT HUP TERM
grace=$1
groups=' '
while IFS= read -r line; do
  case $line in
    +*) groups="$groups\${line#+} " ;;
    -*) p=\${line#-}
        case $groups in *" $p "*) groups="\${groups%% $p *} \${groups#* $p }" ;; esac ;;
  esac
done
[ "$groups" = ' ' ] && exit 0
for p in $groups; do kill -TERM -$p 2>/dev/null; done
i=0
while [ $i -lt $grace ]; do
  alive=
  for p in $groups; do kill -0 -$p 2>/dev/null && alive=1; done
  [ -z "$alive" ] && exit 0
  sleep 0.1
  i=$((i + 1))
done
for p in $groups; do kill -KILL -$p 2>/dev/null; done
exit 0
`;

export class Reaper {
  readonly #graceMs: number;
  readonly #groups = new Set<number>();
  readonly #onError: (error: unknown) => void;
  #proc: ChildProcess | undefined;
  #closed = false;

  /** `graceMs`: how long the children get between SIGTERM and SIGKILL once the sidecar is gone. */
  constructor(graceMs: number, onError: (error: unknown) => void) {
    this.#graceMs = graceMs;
    this.#onError = onError;
    this.#spawn();
  }

  /** The reaper's pid (for tests). */
  get pid(): number | undefined {
    return this.#proc?.pid;
  }

  /** A child's process group started: terminate it if the sidecar dies. */
  add(pgid: number): void {
    this.#groups.add(pgid);
    this.#write(`+${pgid}\n`);
  }

  /** A child's process group is empty (never call this before: its id could be reused). */
  remove(pgid: number): void {
    if (this.#groups.delete(pgid)) this.#write(`-${pgid}\n`);
  }

  /** The sidecar ends normally: close the pipe (the reaper exits, terminating anything still listed). */
  close(): void {
    this.#closed = true;
    this.#proc?.stdin?.end();
  }

  #write(line: string): void {
    const stdin = this.#proc?.stdin;
    if (stdin === undefined || stdin === null || stdin.destroyed) return;
    stdin.write(line);
  }

  #spawn(): void {
    const proc = spawn('/bin/sh', ['-c', SCRIPT, 'rebalancer-reaper', String(Math.ceil(this.#graceMs / 100))], {
      detached: true, // its own process group and session: a terminal's Ctrl-C or a group kill does not reach it
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    this.#proc = proc;
    proc.unref();
    proc.stdin?.on('error', () => undefined); // EPIPE if it died: handled by 'exit'
    proc.on('error', (error) => this.#onError(error));
    proc.on('exit', (code, signal) => {
      if (this.#closed || this.#proc !== proc) return;
      // Somebody killed it: start another one and tell it what is running.
      this.#onError(new Error(`the reaper process exited (code ${code}, signal ${signal}); restarting it`));
      this.#spawn();
      for (const g of this.#groups) this.#write(`+${g}\n`);
    });
  }
}
