#!/usr/bin/env bash
# Installs crier on this machine: the binary, the systemd unit, its user, the config file and
# the tuning files. Run from a checkout, as root:
#
#   scripts/install.sh                 build with cargo (release) and install
#   scripts/install.sh --bin PATH      install an already built binary
#   scripts/install.sh --tune          also run tuning/apply.sh (kernel settings)
#   scripts/install.sh --enable        also enable and start crier.service
#
# With DESTDIR=/some/dir everything goes under that directory instead (for packages and
# tests): no root needed, systemd is not touched, and --tune/--enable are refused.
#
# Places:
#   /usr/local/bin/crier                              the binary
#   /etc/systemd/system/crier.service                 the unit
#   /etc/sysusers.d/crier.conf                        user and group `crier` (systemd-sysusers)
#   /etc/crier/crier.toml                             settings; an existing file is kept, the
#                                                     new sample goes next to it as .new
#   /usr/local/share/crier/tuning/                    apply.sh, sysctl.d/, limits.d/
#   /usr/local/share/crier/low-port.conf              drop-in for ports below 1024
#   /usr/local/share/crier/nginx-crier.conf           NGINX sample (TLS, several nodes)
#   /usr/local/share/doc/crier/                       README.md
# Running it again updates the binary, the unit and the shared files, and keeps the config.
set -euo pipefail

usage() {
	sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

bin=""
build=1
tune=0
enable=0
while [[ $# -gt 0 ]]; do
	case "$1" in
	--bin)
		[[ $# -ge 2 ]] || {
			echo "install.sh: --bin needs a path" >&2
			exit 2
		}
		bin=$2
		build=0
		shift 2
		;;
	--tune)
		tune=1
		shift
		;;
	--enable)
		enable=1
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		echo "install.sh: unknown argument $1 (see --help)" >&2
		exit 2
		;;
	esac
done

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${DESTDIR:-}
dest=${dest%/}

if [[ -n $dest ]]; then
	if [[ $tune -eq 1 || $enable -eq 1 ]]; then
		echo "install.sh: --tune and --enable change the running system; not with DESTDIR" >&2
		exit 2
	fi
elif [[ $(id -u) -ne 0 ]]; then
	echo "install.sh: run as root (it writes /usr/local and /etc), or set DESTDIR to stage the files" >&2
	exit 1
fi

if [[ $build -eq 1 ]]; then
	echo "building: cargo build --release"
	(cd "$src" && cargo build --release --locked --bin crier)
	bin=$src/target/release/crier
fi
if [[ ! -x $bin ]]; then
	echo "install.sh: $bin is not an executable crier binary" >&2
	exit 1
fi

put() { # put MODE SOURCE DEST
	install -D -m "$1" "$2" "$dest$3"
	echo "installed $dest$3"
}

put 0755 "$bin" /usr/local/bin/crier
put 0644 "$src/systemd/crier.service" /etc/systemd/system/crier.service
put 0644 "$src/systemd/crier.sysusers" /etc/sysusers.d/crier.conf

# The user and group first: the config file below is readable by group crier.
if [[ -n $dest ]]; then
	if command -v systemd-sysusers >/dev/null; then
		systemd-sysusers --root="$dest" "$dest/etc/sysusers.d/crier.conf"
	fi
elif command -v systemd-sysusers >/dev/null; then
	systemd-sysusers /etc/sysusers.d/crier.conf
elif ! getent passwd crier >/dev/null; then
	useradd --system --user-group --home-dir / --shell /usr/sbin/nologin --comment "crier WebSocket broadcast server" crier
	echo "created user and group crier"
fi

config=$dest/etc/crier/crier.toml
if [[ ! -e $config ]]; then
	put 0640 "$src/systemd/crier.toml" /etc/crier/crier.toml
	[[ -n $dest ]] || chown root:crier "$config"
elif ! cmp -s "$src/systemd/crier.toml" "$config"; then
	put 0640 "$src/systemd/crier.toml" /etc/crier/crier.toml.new
	[[ -n $dest ]] || chown root:crier "$config.new"
	echo "kept your $config; the shipped sample is $config.new"
else
	echo "ok $config is the shipped sample"
fi

share=/usr/local/share/crier
put 0755 "$src/tuning/apply.sh" "$share/tuning/apply.sh"
for f in "$src"/tuning/sysctl.d/*.conf; do
	put 0644 "$f" "$share/tuning/sysctl.d/$(basename "$f")"
done
put 0644 "$src/tuning/limits.d/90-crier.conf" "$share/tuning/limits.d/90-crier.conf"
put 0644 "$src/systemd/low-port.conf" "$share/low-port.conf"
put 0644 "$src/deploy/nginx/crier.conf" "$share/nginx-crier.conf"
put 0644 "$src/README.md" /usr/local/share/doc/crier/README.md

if [[ -n $dest ]]; then
	echo "staged under $dest"
	exit 0
fi

if [[ $tune -eq 1 ]]; then
	"$share/tuning/apply.sh"
fi

if [[ -d /run/systemd/system ]]; then
	systemctl daemon-reload
	if [[ $enable -eq 1 ]]; then
		systemctl enable --now crier.service
		systemctl --no-pager status crier.service || true
	fi
else
	echo "systemd is not running here: start crier by hand (see README, Operations)"
fi

cat <<EOF

next steps:
  crier check --connections 100000      can this box hold them? what to tune?
  $share/tuning/apply.sh --dry-run      kernel settings it would change (then without --dry-run)
  \$EDITOR /etc/crier/crier.toml         settings (every one listed, with its default)
  systemctl enable --now crier          start now and at boot
  usermod -aG crier <user>              let <user> publish to /run/crier/publish.sock
EOF
