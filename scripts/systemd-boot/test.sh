#!/bin/bash
# codebox under a real systemd: boots a Debian tree (build-tree.sh) with systemd as PID 1
# under systemd-nspawn, installs codebox into it the way an operator does (`make install`,
# DESTDIR = the tree), then inside: systemctl start containerd codeboxd, an execute,
# systemctl restart codeboxd (the session must keep its state), systemctl restart
# containerd (likewise), and a reboot after which codeboxd comes up by itself.
# Everything it makes goes, but the cached tree. Exit 0 when all held.
# usage: scripts/systemd-boot/test.sh   (as root; `make test-systemd` runs it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
MACHINE=codebox-nspawn-test
ROOT=$(mktemp -d /var/tmp/codebox-systemd-XXXXXX)
OUT=$(mktemp -d /tmp/codebox-systemd-logs-XXXXXX)
NSPAWN_PID=""
PID1=""
ok=0

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }
say() { echo "systemd-boot: $*"; }

# The guest's cgroups: on a cgroup v1 host without systemd, nspawn's cgroup namespace starts
# at this shell's cgroups, and nothing removes what the guest's containerd and nspawn make
# there. Only those that were not there before are removed, deepest first, when empty.
guest_cgroups() {
	find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d \( -name codebox -o -name payload \) 2>/dev/null |
		while read -r d; do find "$d" -type d; done | sort -u
}
guest_cgroups >"$OUT/cgroups-before"
had_nspawn_run=0
[ -d /run/systemd/nspawn ] && had_nspawn_run=1

inside() { nsenter -t "$PID1" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

poweroff() {
	inside systemctl poweroff 2>/dev/null || true
	for _ in $(seq 1 300); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
	if kill -0 "$NSPAWN_PID" 2>/dev/null; then
		say "poweroff did not finish within 60 s; SIGKILL to nspawn (pid $NSPAWN_PID)"
		kill -KILL "$NSPAWN_PID" || true
	fi
	wait "$NSPAWN_PID" 2>/dev/null || true
	NSPAWN_PID=""
}

cleanup() {
	local rc=$?
	[ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null && poweroff
	guest_cgroups | sort -r | while read -r d; do
		grep -qxF "$d" "$OUT/cgroups-before" || rmdir "$d" 2>/dev/null || say "left: $d"
	done || true
	[ "$had_nspawn_run" = 1 ] || rm -rf /run/systemd/nspawn
	rm -rf "$ROOT"
	if [ "$ok" = 1 ]; then rm -rf "$OUT"; else say "FAILED; captures in $OUT"; fi
	exit $rc
}
trap cleanup EXIT

# boot: starts the machine, finds its PID 1 (the descendant of nspawn that is PID 1 in its
# own PID namespace) and waits until systemd says it is running.
boot() {
	local t0 st
	t0=$(now)
	SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 setsid systemd-nspawn -D "$ROOT" --boot \
		--machine="$MACHINE" --register=no --keep-unit --capability=all --private-network \
		--system-call-filter='add_key keyctl request_key' \
		--bind=/dev/loop-control --property='DeviceAllow=block-loop rwm' \
		</dev/null >>"$OUT/console.log" 2>&1 &
	NSPAWN_PID=$!
	PID1=""
	for _ in $(seq 1 100); do
		for p in $(pgrep -P "$NSPAWN_PID") $(for c in $(pgrep -P "$NSPAWN_PID"); do pgrep -P "$c"; done); do
			if awk '/^NSpid:/ { exit !($NF == 1 && NF > 2) }' "/proc/$p/status" 2>/dev/null; then PID1=$p; break 2; fi
		done || true
		sleep 0.1
	done
	[ -n "$PID1" ] || { say "no PID 1 in the machine"; cat "$OUT/console.log"; exit 1; }
	for _ in $(seq 1 600); do
		st=$(inside systemctl is-system-running 2>/dev/null || true)
		case "$st" in running | degraded) break ;; esac
		sleep 0.1
	done
	say "booted to $st in $(since "$t0")"
}

wait_active() {
	local a=""
	for _ in $(seq 1 3000); do
		a=$(inside systemctl is-active codeboxd 2>/dev/null || true)
		case "$a" in active | failed) break ;; esac
		sleep 0.2
	done
	[ "$a" = active ] || { inside journalctl -u codeboxd --no-pager | tail -40; say "codeboxd is $a"; exit 1; }
}

expect() { # expect WHAT WANT CMD...: runs CMD inside, compares its last line with WANT
	local what=$1 want=$2 got
	shift 2
	got=$(inside "$@" 2>&1 | tail -1) || true
	if [ "$got" != "$want" ]; then
		say "$what: got '$got', want '$want'"
		inside journalctl -u codeboxd --no-pager | tail -40
		exit 1
	fi
	say "$what: $got"
}

t0=$(now)
tree=$("$here/build-tree.sh")
say "tree $tree ($(since "$t0"))"
cp -a --reflink=auto "$tree/." "$ROOT/"
make -C "$src" -s install DESTDIR="$ROOT" >"$OUT/make-install.log" 2>&1
# A pool for two cores, set the way the settings file says.
printf 'CODEBOX_MIN_IDLE_WORKERS=2\nCODEBOX_MAX_TOTAL_WORKERS=6\n' >>"$ROOT/etc/default/codeboxd"
install -D -m 0755 "$here/nspawn-prep" "$ROOT/usr/local/sbin/nspawn-prep"
install -D -m 0644 "$here/nspawn-prep.service" "$ROOT/etc/systemd/system/nspawn-prep.service"
mkdir -p "$ROOT/etc/systemd/system/sysinit.target.wants"
ln -sf ../nspawn-prep.service "$ROOT/etc/systemd/system/sysinit.target.wants/nspawn-prep.service"

boot
t1=$(now)
inside systemctl daemon-reload
inside systemctl enable containerd codeboxd >"$OUT/enable.log" 2>&1
inside systemctl start --no-block containerd codeboxd
wait_active
say "systemctl start containerd codeboxd: active (READY) in $(since "$t1"), the worker image imported"
inside systemctl show codeboxd -p StatusText | tee -a "$OUT/status"
expect "execute" "" codebox exec -u alice 'x = 41'
expect "execute" "42" codebox exec -u alice 'x + 1'

t2=$(now)
inside systemctl restart codeboxd
wait_active
say "systemctl restart codeboxd: active again in $(since "$t2")"
expect "the session after the restart" "42" codebox exec -u alice 'x + 1'

t3=$(now)
inside systemctl restart containerd # Requires=: codeboxd restarts with it
wait_active
say "systemctl restart containerd: codeboxd active again in $(since "$t3")"
expect "the session after containerd's restart" "42" codebox exec -u alice 'x + 1'

poweroff
boot
wait_active
say "after a reboot codeboxd came up by itself"
expect "after the reboot (the workers died with the machine)" "'new'" codebox exec -u bob "'new'"
poweroff
ok=1
say "ok in $(since "$t0")"
