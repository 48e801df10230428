#!/usr/bin/env bash
# Builds the runtime image's whole filesystem in <dir>: what `herald` needs to run and nothing
# else (no shell, no package manager). The Dockerfile copies it into an empty image; the
# tests build it here and run herald inside it with chroot.
#
#   infra/deploy/rootfs.sh <dir> [herald binary]
#
# From Debian (apt-get download, so the versions are the distribution's, with its security
# fixes): the C library, libgcc, zlib and SQLite (what `ldd herald` lists), plus the CA bundle
# (/etc/ssl/certs/ca-certificates.crt, for HTTPS and SMTP over TLS) and a non-root user
# `herald` (uid 10001) owning /var/lib/herald. Debs are cached under ~/.cache/herald/debs.
set -euo pipefail
root=${1:?usage: rootfs.sh <dir> [herald binary]}
binary=${2:-}
packages=(libc6 libgcc-s1 zlib1g libsqlite3-0)
cache="${HOME:-/root}/.cache/herald/debs"
mkdir -p "$cache" "$root"
for package in "${packages[@]}"; do
  version=$(dpkg-query -W -f '${Version}' "$package" 2>/dev/null || apt-cache policy "$package" | awk '/Candidate:/ {print $2}')
  if ! ls "$cache/${package}_"*.deb >/dev/null 2>&1 || ! dpkg-deb -f "$cache/${package}_"*.deb Version | grep -qx "$version"; then
    rm -f "$cache/${package}_"*.deb
    (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$package=$version" >&2)
  fi
  dpkg-deb -x "$cache/${package}_"*.deb "$root"
done
# Documentation, manuals and the C library's character-set converters: herald uses none.
rm -rf "$root"/usr/share/{doc,man,info,lintian,locale} "$root"/usr/lib/x86_64-linux-gnu/gconv
mkdir -p "$root"/etc/ssl/certs "$root"/tmp "$root"/var/lib/herald "$root"/usr/local/bin
chmod 1777 "$root/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nherald:x:10001:10001:herald:/var/lib/herald:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nherald:x:10001:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chown 10001:10001 "$root/var/lib/herald"
if [ -n "$binary" ]; then
  install -m 0755 "$binary" "$root/usr/local/bin/herald"
  strip "$root/usr/local/bin/herald"
fi
