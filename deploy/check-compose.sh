#!/usr/bin/env bash
# Fails with a clear message unless `docker compose` (v2) is there, and at least the version given (default
# 2.0). docker-compose.cpu.yml uses the `!reset` tag, which Compose understands from 2.24.0 on; older ones stop
# with a YAML error that does not say so.
set -euo pipefail
need="${1:-2.0}"
if ! version="$(docker compose version --short 2>/dev/null)"; then
  echo "error: 'docker compose' (Compose v2) is not installed; see https://docs.docker.com/compose/install/" >&2
  exit 1
fi
version="${version#v}"
if [ "$(printf '%s\n%s\n' "$need" "$version" | sort -V | head -n1)" != "$need" ]; then
  echo "error: Docker Compose $version is too old: these files need Compose >= $need (docker-compose.cpu.yml uses !reset, new in 2.24.0)" >&2
  exit 1
fi
