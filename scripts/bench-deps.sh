#!/usr/bin/env bash
# What `cargo bench --bench proxy` needs: Debian's nginx (the reference reverse proxy Corral is
# compared with) and wrk (the load generator). Installs them with apt-get when missing. The bench
# runs nginx as a non-daemon child with its own config in a temp dir, so the system service is
# never used (and is stopped if apt started it). Prints nginx's path on stdout.
set -euo pipefail

sudo_cmd=()
[[ "$(id -u)" -ne 0 ]] && sudo_cmd=(sudo)
updated=
apt_update() { [[ -n "$updated" ]] || "${sudo_cmd[@]}" apt-get update -qq >&2; updated=1; }

if ! command -v wrk >/dev/null 2>&1; then
  apt_update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends wrk >&2
fi
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  apt_update
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nginx-light >&2 \
    || DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nginx >&2
  # apt may start the packaged service on port 80; the bench does not want it.
  if command -v systemctl >/dev/null 2>&1; then "${sudo_cmd[@]}" systemctl stop nginx 2>/dev/null || true; fi
  if [[ -f /run/nginx.pid ]]; then "${sudo_cmd[@]}" kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
fi
command -v nginx 2>/dev/null || echo /usr/sbin/nginx
