# shellcheck shell=bash
# Boots a real systemd as PID 1 of new PID, mount, cgroup, network, UTS and
# IPC namespaces, inside a cgroup created for it, so that "the cgroup2 root"
# seen from inside is that cgroup and never the host's. Sourced by
# tests/e2e/run; see DEVELOPERS.md.
#
#   ns_boot NAME       creates the cgroup, boots systemd, waits for its bus
#   ns NAME... CMD     runs CMD inside (all namespaces; the caller's cgroup)
#   ns_run CMD         runs CMD as a transient unit of the inner systemd, i.e.
#                      inside the test cgroup (traced), stdout piped back
#   ns_cleanup         kills everything in the cgroup and removes it
#
# Only the units needed (journald, dbus, polkit and what is installed under
# test) can start: every other unit file on the host is masked in
# /run/systemd/system.control, which outranks /etc and /lib, so no host
# service (tmpfiles --remove on the host's /tmp, swapon, sysctl, getty, ...)
# runs twice.

NS_CG=""        # the test cgroup, on the host's cgroup2 mount
NS_PID=""       # PID 1 of the namespaces, as seen from the host
NS_MNT=""

cgroup2_mount() {
  # Field 5 is the mount point; the filesystem type follows the " - "
  # separator (optional fields before it vary in number).
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo
}

ns_boot() {
  local name=$1
  local cg2
  cg2=$(cgroup2_mount)
  [ -n "$cg2" ] || { echo "no cgroup2 mount in /proc/self/mountinfo" >&2; return 1; }
  NS_CG="$cg2/$name"
  mkdir "$NS_CG"
  local allowed=" dbus.service dbus.socket polkit.service systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket "
  NS_MNT=$(mktemp -d /tmp/ct-e2e-boot.XXXXXX)
  # Inner setup, run as PID 1 before it execs systemd: private /run, /tmp,
  # a cgroup2 mount whose root is the namespace's (= $NS_CG), a private bpffs.
  cat >"$NS_MNT/init" <<INIT
#!/bin/sh
set -e
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
# The host's cgroup mounts go (else the daemon, reading mountinfo, could
# find the host's cgroup2 and its real root); a fresh cgroup2 mount made in
# the new cgroup namespace has the test cgroup as its root.
umount -R /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mkdir -p /run/systemd/system.control /run/systemd/journald.conf.d /run/systemd/system
printf '[Journal]\nStorage=volatile\n' >/run/systemd/journald.conf.d/e2e.conf
for f in /lib/systemd/system/* /etc/systemd/system/*; do
  u=\${f##*/}
  [ -d "\$f" ] && continue
  case \$u in *.target|*.slice) continue ;; esac
  case "$allowed" in *" \$u "*) continue ;; esac
  ln -sf /dev/null "/run/systemd/system.control/\$u"
done
# swap.target pulls the host's swap (generated from fstab): mask it too.
ln -sf /dev/null /run/systemd/system.control/swap.target
cat >/run/systemd/system/connectracer-e2e.target <<T
[Unit]
Description=connectracer end-to-end test
Requires=basic.target dbus.socket
After=basic.target dbus.socket
T
export container=connectracer-e2e
exec /lib/systemd/systemd --unit=connectracer-e2e.target --log-target=console --log-level=warning
INIT
  chmod +x "$NS_MNT/init"
  # The subshell joins the cgroup first: unshare --cgroup then makes it the
  # root of the new cgroup namespace.
  (
    echo "$BASHPID" >"$NS_CG/cgroup.procs"
    exec unshare --pid --fork --mount --propagation private --cgroup --net --uts --ipc \
      --mount-proc "$NS_MNT/init" </dev/null >"$NS_MNT/console.log" 2>&1
  ) &
  local unshare_pid=$!
  # Not a job of the caller's shell: its end (killed at cleanup) is expected.
  disown "$unshare_pid"
  local i
  for i in $(seq 100); do
    # unshare (the subshell) forks PID 1 of the new namespace.
    NS_PID=$(pgrep -P "$unshare_pid" -n 2>/dev/null || true)
    [ -n "$NS_PID" ] && [ "$(cat /proc/"$NS_PID"/comm 2>/dev/null)" = systemd ] && break
    NS_PID=""
    sleep 0.1
  done
  [ -n "$NS_PID" ] || { echo "systemd did not start:" >&2; cat "$NS_MNT/console.log" >&2; return 1; }
  for i in $(seq 300); do
    state=$(ns systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) return 0 ;; esac
    sleep 0.1
  done
  echo "inner systemd is '$state' after 30 s:" >&2
  ns systemctl --failed --no-pager >&2 || true
  cat "$NS_MNT/console.log" >&2
  return 1
}

ns() {
  nsenter --target "$NS_PID" --mount --pid --cgroup --net --uts --ipc -- "$@"
}

ns_run() {
  ns systemd-run --quiet --wait --pipe --collect "$@"
}

ns_cleanup() {
  if [ -n "$NS_CG" ] && [ -d "$NS_CG" ]; then
    # cgroup.kill takes the whole subtree, systemd included.
    echo 1 >"$NS_CG/cgroup.kill" 2>/dev/null || true
    local i
    for i in $(seq 100); do
      # Children first: the inner systemd made a tree of its own.
      find "$NS_CG" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
      rmdir "$NS_CG" 2>/dev/null && break
      sleep 0.1
    done
    [ -d "$NS_CG" ] && echo "warning: could not remove $NS_CG" >&2
  fi
  [ -n "$NS_MNT" ] && rm -rf "$NS_MNT"
  NS_CG="" NS_PID="" NS_MNT=""
}
