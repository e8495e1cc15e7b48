#!/usr/bin/env bash
# Applies crier's kernel tuning to this machine, now and at every boot.
#
#   tuning/apply.sh            as root: set the live values, install the files
#   tuning/apply.sh --dry-run  as anyone: print what would change, change nothing
#
# What it does, in order:
#   1. For each key of sysctl.d/90-crier.conf and sysctl.d/91-crier-conntrack.conf, compare
#      the live value (/proc/sys) with the file's and set it when they differ, printing
#      "key: old → new". Keys already at their value are reported as "ok" and left alone.
#   2. Install those files into /etc/sysctl.d/ and limits.d/90-crier.conf into
#      /etc/security/limits.d/, so the values hold after a reboot.
#
# It never lowers a limit: where the live value of a limit (fs.file-max, fs.nr_open,
# somaxconn, the backlogs, nf_conntrack_max, each tcp_mem threshold, the tcp_rmem/tcp_wmem
# maximum) is already higher than the file's, the live value stays, and the file installed
# in /etc/sysctl.d/ records that higher value so a reboot keeps it too.
# tcp_fin_timeout is only ever lowered. Running it twice changes nothing the second time.
#
# Keys missing from /proc/sys (nf_conntrack_max without the nf_conntrack module) are
# skipped. CRIER_TUNING_PROC (default /proc/sys) and CRIER_TUNING_ETC (default /etc) point
# it at another tree, for tests and image builds.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: apply.sh [--dry-run]

Sets crier's sysctls (tuning/sysctl.d/) on the running kernel and installs them and
tuning/limits.d/90-crier.conf under /etc. Needs root, except with --dry-run.

  --dry-run   print every change it would make (key: old → new); change nothing
  -h, --help  this text
EOF
}

dry_run=0
for arg in "$@"; do
	case "$arg" in
	--dry-run | -n) dry_run=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		printf 'apply.sh: unknown argument %s\n' "$arg" >&2
		usage >&2
		exit 2
		;;
	esac
done

if [[ $dry_run -eq 0 && $(id -u) -ne 0 ]]; then
	printf 'apply.sh: refusing to run as %s (uid %s): changing kernel settings and /etc needs root.\n' \
		"$(id -un 2>/dev/null || echo '?')" "$(id -u)" >&2
	printf '  sudo %s          to apply\n  %s --dry-run     to see what would change\n' "$0" "$0" >&2
	exit 1
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
proc=${CRIER_TUNING_PROC:-/proc/sys}
etc=${CRIER_TUNING_ETC:-/etc}
changes=0

if [[ $dry_run -eq 1 ]]; then
	echo "apply.sh --dry-run: nothing will be changed"
	would="would "
else
	would=""
fi

# How each component of a key may move: "=" set to the file's value, "+" only raise,
# "-" only lower. Keys not listed are "=" in every component.
mode_of() {
	case "$1" in
	fs.file-max | fs.nr_open | net.core.somaxconn | net.ipv4.tcp_max_syn_backlog | \
		net.core.netdev_max_backlog | net.netfilter.nf_conntrack_max) echo "+" ;;
	net.ipv4.tcp_mem) echo "+ + +" ;;
	net.ipv4.tcp_rmem | net.ipv4.tcp_wmem) echo "= = +" ;;
	net.ipv4.tcp_fin_timeout) echo "-" ;;
	*) echo "=" ;;
	esac
}

# merge MODES WANTED LIVE: the value to hold, component by component.
merge() {
	local -a modes wanted live out=()
	read -r -a modes <<<"$1"
	read -r -a wanted <<<"$2"
	read -r -a live <<<"$3"
	local i m w l
	for i in "${!wanted[@]}"; do
		m=${modes[$i]:-=}
		w=${wanted[$i]}
		l=${live[$i]:-}
		if [[ -n $l && $m == "+" && $l -gt $w ]] || [[ -n $l && $m == "-" && $l -lt $w ]]; then
			out+=("$l")
		else
			out+=("$w")
		fi
	done
	echo "${out[*]}"
}

# apply_sysctl_file SRC: sets each key's live value, and leaves in $installed the file to
# install (the same text, with the values the live system keeps written in).
installed=""
apply_sysctl_file() {
	local src=$1 line key value optional path live target
	local -a parts
	installed=""
	while IFS= read -r line || [[ -n $line ]]; do
		if [[ $line =~ ^[[:space:]]*(-?)([A-Za-z0-9_.-]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]]; then
			optional=${BASH_REMATCH[1]}
			key=${BASH_REMATCH[2]}
			read -r -a parts <<<"${BASH_REMATCH[3]}"
			value="${parts[*]}"
			path="$proc/${key//.//}"
			if [[ ! -e $path ]]; then
				if [[ -n $optional ]]; then
					echo "skip $key: not present in $proc (module not loaded)"
				else
					echo "skip $key: not present in $proc (kernel too old or not in this namespace)"
				fi
				installed+="$line"$'\n'
				continue
			fi
			read -r -a parts <"$path"
			live="${parts[*]}"
			target=$(merge "$(mode_of "$key")" "$value" "$live")
			if [[ $live == "$target" ]]; then
				if [[ $target == "$value" ]]; then
					echo "ok   $key = $live"
				else
					echo "ok   $key = $live (kept over the file's $value)"
				fi
			else
				echo "${would}set $key: $live → $target"
				changes=$((changes + 1))
				if [[ $dry_run -eq 0 ]]; then
					if ! printf '%s\n' "$target" >"$path"; then
						echo "apply.sh: could not write $path" >&2
						exit 1
					fi
				fi
			fi
			installed+="$optional$key = $target"$'\n'
		else
			installed+="$line"$'\n'
		fi
	done <"$src"
}

# install_text TEXT DEST: writes TEXT (which ends in a newline) to DEST when DEST differs.
install_text() {
	local text=$1 dest=$2
	if [[ -f $dest ]] && cmp -s "$dest" <(printf '%s' "$text"); then
		echo "ok   $dest is up to date"
		return
	fi
	if [[ -e $dest ]]; then
		echo "${would}update $dest"
	else
		echo "${would}install $dest"
	fi
	changes=$((changes + 1))
	if [[ $dry_run -eq 0 ]]; then
		mkdir -p "$(dirname "$dest")"
		printf '%s' "$text" >"$dest.crier-tmp"
		chmod 0644 "$dest.crier-tmp"
		mv -f "$dest.crier-tmp" "$dest"
	fi
}

for name in 90-crier.conf 91-crier-conntrack.conf; do
	apply_sysctl_file "$here/sysctl.d/$name"
	install_text "$installed" "$etc/sysctl.d/$name"
done
install_text "$(<"$here/limits.d/90-crier.conf")"$'\n' "$etc/security/limits.d/90-crier.conf"

if [[ $changes -eq 0 ]]; then
	echo "nothing to change"
elif [[ $dry_run -eq 1 ]]; then
	echo "$changes change(s) would be made; run as root without --dry-run to apply"
else
	echo "$changes change(s) made"
fi
