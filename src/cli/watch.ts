/**
 * The `--watch` loop of the status commands (`status --group`, `fleet status`): redraw on every change under a
 * prefix (a store watch, plus a re-read every second for lost hints and sessions that expire without a write) until
 * Ctrl-C or SIGTERM. Reads run one at a time; a hint during a read asks for exactly one more. A view that did not
 * change is not printed again.
 */
import type { Store } from '../store/contract.js';
import { out } from './context.js';

export interface WatchFrame {
  /** What is shown (and compared with the last frame): the text, or with --json the JSON line. */
  readonly text: string;
  /** With --json: the object printed, stamped with the time (default: `text` as it is). */
  readonly stamped?: object | undefined;
}

export async function watchView(
  store: Store,
  prefix: string,
  json: boolean,
  frame: () => Promise<WatchFrame>,
): Promise<void> {
  const tty = process.stdout.isTTY && !json;
  let last = '';
  let busy = false;
  let again = false;
  const refresh = async (): Promise<void> => {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      do {
        again = false;
        const f = await frame();
        if (f.text === last) continue;
        last = f.text;
        if (json)
          out(f.stamped === undefined ? f.text : JSON.stringify({ ...f.stamped, at: new Date().toISOString() }));
        else if (tty) process.stdout.write(`\x1b[H\x1b[2J${f.text}\n\n(live; Ctrl-C to stop)\n`);
        else out(`--- ${new Date().toISOString()}\n${f.text}`);
      } while (again);
    } finally {
      busy = false;
    }
  };
  let failure: unknown;
  let stop: () => void = () => undefined;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const run = (): void => {
    refresh().catch((err: unknown) => {
      failure = err;
      stop();
    });
  };
  const watcher = await store.watch(prefix, run);
  const timer = setInterval(run, 1000);
  const onSignal = (): void => stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  run();
  try {
    await stopped;
  } finally {
    clearInterval(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await watcher.close();
  }
  if (failure !== undefined) throw failure;
}
