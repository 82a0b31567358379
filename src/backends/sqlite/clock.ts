/**
 * The expiry clock of the SQLite backend.
 *
 * SQLite has no server, so session expiry is decided by the host's clock, and
 * every process using the database file must read the SAME clock. We use the
 * kernel's monotonic clock as exposed by `process.hrtime` (libuv's
 * uv_hrtime: CLOCK_MONOTONIC on Linux, mach_absolute_time on macOS,
 * QueryPerformanceCounter on Windows). It is system-wide, so all processes on
 * the host agree on it, and unlike Date.now() it never jumps when NTP or an
 * operator steps the wall clock: a step of the wall clock would otherwise
 * expire every session at once (forward step) or keep dead sessions' keys
 * alive for the length of the step (backward step).
 *
 * It is also the clock `performance.now()` (the default store clock) is
 * derived from, so a session's `safeUntilMs` and its expiry are measured by
 * the same oscillator: their relative drift is zero.
 *
 * Its value restarts at boot. Expiry times persisted before a reboot are
 * therefore meaningless after it; the store detects that when it opens the
 * file (a session last renewed "in the future") and expires every session.
 */
export function hostMonotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}
