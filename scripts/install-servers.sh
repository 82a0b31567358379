#!/usr/bin/env bash
# Make sure the server binaries the real-server tests start are installed.
# Idempotent and fast when everything is present (only file checks, no apt).
set -euo pipefail

missing=()

have() { command -v "$1" >/dev/null 2>&1; }

have redis-server || missing+=(redis-server)
# PostgreSQL binaries live in a versioned directory; any major version will do.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
# The postgres backend is also tested behind pgbouncer in transaction-pooling mode.
{ [[ -x /usr/sbin/pgbouncer ]] || have pgbouncer; } || missing+=(pgbouncer)
have etcd || missing+=(etcd-server)
have etcdctl || missing+=(etcd-client)
# ZooKeeper is run straight from its jar, which needs a JVM (the package pulls one in).
{ [[ -f /usr/share/java/zookeeper.jar ]] && have java; } || missing+=(zookeeper)
# The /usr/sbin wrapper switches user; the harness runs the real script directly.
[[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || missing+=(rabbitmq-server)
# The raft transport's mutual-TLS test makes a throwaway CA with openssl.
have openssl || missing+=(openssl)

if ((${#missing[@]} == 0)); then
  echo "install-servers: all test servers present"
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}"
if ((EUID != 0)); then
  echo "install-servers: missing ${missing[*]}; run as root: $cmd" >&2
  exit 1
fi

# Keep apt's chatter out of the way; show it only if something fails.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 30 "$log" >&2
  echo "install-servers: failed: $cmd" >&2
  exit 1
fi
echo "install-servers: installed ${missing[*]}"
