/**
 * Network failures in plain words, for every backend's error messages. A
 * driver's text ("connect ECONNREFUSED 127.0.0.1:6390", "14 UNAVAILABLE: No
 * connection established…", "Reached the max retries per request limit")
 * says what broke inside the driver; an operator needs to hear which server
 * did not answer, why, and what to check. The driver's error stays the
 * `cause` of ours.
 */
import { StoreUnavailableError } from '../errors.js';

/** Node's system error codes, as an operator would say them. */
const PROBLEMS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'host name not found',
  EAI_NONAME: 'host name not found',
  EAI_AGAIN: 'the host name could not be looked up',
  ETIMEDOUT: 'connection timed out',
  ECONNRESET: 'the connection was reset',
  ECONNABORTED: 'the connection was closed',
  EPIPE: 'the connection was closed',
  EHOSTUNREACH: 'no route to the host',
  ENETUNREACH: 'the network is unreachable',
  EADDRNOTAVAIL: 'the address is not available here',
  EACCES: 'the connection was not permitted',
};

const CODE_IN_TEXT = new RegExp(`\\b(${Object.keys(PROBLEMS).join('|')})\\b`);

/** TLS failures: a certificate the client does not trust is the usual one. */
const TLS_CODE = /^(ERR_TLS_|ERR_SSL_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_)/;

/**
 * What happened to the connection, in a few plain words ("connection
 * refused", "host name not found", "the TLS handshake failed: …"), found in
 * the error, its causes, or the error codes a driver quotes in its text;
 * undefined when it is not a network failure we know.
 */
export function networkProblem(err: unknown): string | undefined {
  const seen = new Set<unknown>();
  const queue: unknown[] = [err];
  while (queue.length > 0 && seen.size < 16) {
    const e = queue.shift();
    if (e === null || typeof e !== 'object' || seen.has(e)) continue;
    seen.add(e);
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') {
      const problem = PROBLEMS[code];
      if (problem !== undefined) return problem;
      if (TLS_CODE.test(code)) {
        return /CERT|SIGNED|UNABLE_TO/.test(code)
          ? "the TLS handshake failed: the server's certificate is not trusted"
          : 'the TLS handshake failed';
      }
    }
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string') {
      const quoted = CODE_IN_TEXT.exec(message)?.[1];
      if (quoted !== undefined) return PROBLEMS[quoted];
    }
    queue.push((e as { cause?: unknown }).cause);
    const inner = (e as { errors?: unknown }).errors;
    if (Array.isArray(inner)) queue.push(...(inner as unknown[]));
  }
  return undefined;
}

/**
 * "`Redis at 127.0.0.1:6390` is not answering (connection refused); check
 * that the server runs and the URL is right".
 */
export function notAnswering(server: string, problem: string): string {
  return `${server} is not answering (${problem}); check that the server runs and the URL is right`;
}

/** What to add when a write's outcome is unknown. */
export const OUTCOME_UNKNOWN = 'it may or may not have been applied: re-read before retrying';

/**
 * The error of a request that failed below the server's answer: "<server> is
 * not answering (<problem>); check…" when the network `problem` is known,
 * else "<what> failed on <server> (an unexpected error: see the cause)"; with
 * the advice for a write whose outcome is unknown.
 */
export function requestFailed(
  server: string,
  what: string,
  problem: string | undefined,
  cause: unknown,
  outcome: 'not-applied' | 'unknown',
): StoreUnavailableError {
  const text =
    problem === undefined
      ? `${what} failed on ${server} (an unexpected error: see the cause)`
      : notAnswering(server, problem);
  return new StoreUnavailableError(outcome === 'unknown' ? `${text}; ${OUTCOME_UNKNOWN}` : text, { cause, outcome });
}
