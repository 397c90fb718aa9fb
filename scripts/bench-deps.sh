#!/usr/bin/env bash
# What `cargo bench --bench proxy` compares Corral against: Debian's nginx (the reference reverse
# proxy). Installs it with apt-get when missing; the bench runs it as a non-daemon child with its
# own config in a temp dir, so the system service is never used (and is stopped if apt started it).
set -euo pipefail

if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  sudo_cmd=()
  [[ "$(id -u)" -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nginx-light \
    || DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends nginx
  # apt may start the packaged service on port 80; the bench does not want it.
  if command -v systemctl >/dev/null 2>&1; then "${sudo_cmd[@]}" systemctl stop nginx 2>/dev/null || true; fi
  if [[ -f /run/nginx.pid ]]; then "${sudo_cmd[@]}" kill "$(cat /run/nginx.pid)" 2>/dev/null || true; fi
fi
command -v nginx 2>/dev/null || echo /usr/sbin/nginx
