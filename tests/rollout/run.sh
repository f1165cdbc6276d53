#!/usr/bin/env bash
# make rollout-test: roll gearctl out with Ansible (ansible/site.yml) over ssh to three "hosts"
# (network namespaces with their own addresses on a bridge, an sshd in each), check that a real
# gearman job runs through every node, that a second run changes nothing, and that a rolling
# restart brings every node back; then tear everything down, even on failure.
#
# Needs root. Hosts: gcr-h1..3 = 10.77.0.11..13/24 on bridge gcr-br0 (10.77.0.1, root namespace,
# where ansible runs). Traffic stays on that bridge. The namespaces share this machine's
# filesystem, so each host's files live under $WORK/hosts/hN (gearctl_host_root) and services run
# under deploy/gearctl-runner (no systemd here).
# Env: KEEP=1 keeps $WORK (logs) after the run; ROLLING=0 skips the rolling-restart step.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PREFIX=gcr
BRIDGE=$PREFIX-br0
SUBNET=10.77.0
HOSTS=(1 2 3)
LOCK=/run/gearctl-rollout.lock
T0=$(date +%s.%N)

say() { printf '[rollout %6.1fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc)" "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, sshd, apt-get)"
exec 9>"$LOCK"
flock -n 9 || die "another rollout test holds $LOCK"

# --- prerequisites ------------------------------------------------------------------------------
packages=(openssh-server openssh-client iproute2 bc gearman-job-server gearman-tools memcached
          zookeeper default-jre-headless python3-venv python3-apt)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$REPO/.venv/bin/python" ] || "$REPO/scripts/bootstrap.sh"
if ! "$REPO/.venv/bin/ansible-playbook" --version >/dev/null 2>&1; then
  "$REPO/.venv/bin/python" -m pip install -q 'ansible-core>=2.19,<2.20'
fi
ANSIBLE_PLAYBOOK=$REPO/.venv/bin/ansible-playbook

# --- teardown (also removes what a killed earlier run left: everything named gcr-*) -------------
WORK=
kill_namespace() {  # every process in our namespace was started by this test (sshd and children)
  local ns=$1 pids
  pids=$(ip netns pids "$ns" 2>/dev/null || true)
  [ -n "$pids" ] || return 0
  # Stop the supervisors first so nothing is respawned, then everything else.
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 50); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
  kill -KILL $pids 2>/dev/null || true
  sleep 0.2
}
teardown() {
  local rc=$?
  set +e
  say "teardown"
  if [ -n "$WORK" ]; then
    for i in "${HOSTS[@]}"; do
      ssh -o ControlPath="$WORK/cp-%h" -O exit "$SUBNET.1$i" >/dev/null 2>&1
    done
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-h"); do
    kill_namespace "$ns"
    ip netns delete "$ns"
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$PREFIX-"); do
    ip link delete "$link" 2>/dev/null
  done
  if [ -n "$WORK" ]; then
    if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
      say "logs kept in $WORK/hosts/h*/var/log/gearctl and $WORK/hosts/h*/var/lib/gearctl/log"
    else
      rm -rf "$WORK"
    fi
  fi
  say "done (exit $rc)"
  exit $rc
}
trap teardown EXIT
trap 'exit 130' INT TERM
# Left over from a killed run?
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-h" || true); do
  say "removing leftover namespace $ns"; kill_namespace "$ns"; ip netns delete "$ns"
done
ip link delete "$BRIDGE" 2>/dev/null || true

WORK=$(mktemp -d /tmp/gearctl-rollout.XXXXXX)
chmod 0755 "$WORK"   # services run as gearman/memcache/zookeeper and must reach their dirs

# --- wheels for the hosts (they reach no package index) -----------------------------------------
say "building the wheelhouse"
# Built from a copy of the working tree, so the build leaves nothing in the repository.
mkdir -p "$WORK/src"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/cluster" "$WORK/src/"
"$REPO/.venv/bin/python" -m pip wheel -q -w "$WORK/wheels" "$WORK/src" 2>&1 | grep -v "^WARNING: Location" >&2 || true
ls "$WORK"/wheels/gearctl-*.whl >/dev/null || die "no gearctl wheel built"

# --- network: bridge + one namespace per host ---------------------------------------------------
say "creating hosts"
ip link add "$BRIDGE" type bridge
ip addr add "$SUBNET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in "${HOSTS[@]}"; do
  ns=$PREFIX-h$i
  ip netns add "$ns"
  ip link add "$ns-br" type veth peer name "$ns-eth"
  ip link set "$ns-eth" netns "$ns"
  ip link set "$ns-br" master "$BRIDGE" up
  ip -n "$ns" addr add "$SUBNET.1$i/24" dev "$ns-eth"
  ip -n "$ns" link set "$ns-eth" up
  ip -n "$ns" link set lo up
done

# --- sshd per host ------------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key" -C gearctl-rollout
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key" -C gearctl-rollout-host
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
mkdir -p /run/sshd
for i in "${HOSTS[@]}"; do
  ns=$PREFIX-h$i
  mkdir -p "$WORK/hosts/h$i"
  chmod 0755 "$WORK/hosts/h$i"
  cat >"$WORK/sshd-h$i.conf" <<CONF
ListenAddress $SUBNET.1$i:22
HostKey $WORK/host_key
PidFile $WORK/sshd-h$i.pid
AuthorizedKeysFile $WORK/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
  ip netns exec "$ns" /usr/sbin/sshd -f "$WORK/sshd-h$i.conf" -D -E "$WORK/sshd-h$i.log" &
done
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes
          -o ConnectTimeout=5 -i "$WORK/client_key" -o LogLevel=ERROR)
for i in "${HOSTS[@]}"; do
  for _ in $(seq 50); do
    ssh "${SSH_OPTS[@]}" "root@$SUBNET.1$i" true 2>/dev/null && break
    sleep 0.1
  done
  ssh "${SSH_OPTS[@]}" "root@$SUBNET.1$i" true || die "no ssh to $SUBNET.1$i"
done
say "3 hosts with sshd up"

# --- inventory ----------------------------------------------------------------------------------
cat >"$WORK/inventory.yml" <<INV
all:
  vars:
    ansible_user: root
    ansible_become: false
    ansible_python_interpreter: /usr/bin/python3
    ansible_ssh_private_key_file: $WORK/client_key
    ansible_ssh_common_args: >-
      -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
      -o ControlMaster=auto -o ControlPersist=120s -o ControlPath=$WORK/cp-%h
    gearctl_cluster: rollout
    gearctl_service_manager: runner
    gearctl_wheelhouse: $WORK/wheels
    zookeeper_tick_ms: 500
    zookeeper_heap_mb: 128
    memcached_memory_mb: 64
    gearctl_expected_queue_depth: 10000
  children:
    zookeeper:
      hosts:
        h1: {zookeeper_myid: 1}
        h2: {zookeeper_myid: 2}
        h3: {zookeeper_myid: 3}
    gearman_nodes:
      hosts:
        h1: {gearctl_node: node1, gearctl_store_host: h2, gearctl_store_port: 11211}
        h2: {gearctl_node: node2, gearctl_store_host: h3, gearctl_store_port: 11211}
        h3: {gearctl_node: node3, gearctl_store_host: h1, gearctl_store_port: 11211}
  hosts:
    h1: {ansible_host: $SUBNET.11, gearctl_host_root: $WORK/hosts/h1}
    h2: {ansible_host: $SUBNET.12, gearctl_host_root: $WORK/hosts/h2}
    h3: {ansible_host: $SUBNET.13, gearctl_host_root: $WORK/hosts/h3}
INV
export ANSIBLE_CONFIG=$REPO/ansible/ansible.cfg ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCAL_TEMP=$WORK/ansible-local ANSIBLE_REMOTE_TEMP=/tmp/.gearctl-rollout-ansible

playbook() {  # playbook NAME LOG [args]: run it, keep its output (each line timed), return its status
  local name=$1 log=$2; shift 2
  (cd "$REPO/ansible" && "$ANSIBLE_PLAYBOOK" -i "$WORK/inventory.yml" "$name" "$@") 2>&1 \
    | while IFS= read -r line; do printf '%s %s\n' "$(date +%T.%N | cut -c1-12)" "$line"; done >"$log"
  return "${PIPESTATUS[0]}"
}
recap_changed() {  # the sum of changed= over the play recap
  sed -n '/PLAY RECAP/,$p' "$1" | grep -o 'changed=[0-9]*' | cut -d= -f2 | paste -sd+ | bc
}

# --- 1. first rollout ---------------------------------------------------------------------------
t=$(date +%s.%N)
say "site.yml (first run)"
playbook site.yml "$WORK/site-1.log" || { tail -n 60 "$WORK/site-1.log" >&2; die "site.yml failed"; }
FIRST=$(echo "$(date +%s.%N) - $t" | bc)
say "site.yml first run: $(sed -n '/PLAY RECAP/,$p' "$WORK/site-1.log" | grep -c 'failed=0') hosts ok, ${FIRST}s"

# --- 2. a real gearman job through every node ---------------------------------------------------
store_items() {  # store_items NS ADDR: memcached curr_items, asked from inside namespace NS
  ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/11211; printf 'stats\r\nquit\r\n' >&3; timeout 2 cat <&3" \
    | tr -d '\r' | awk '$2 == "curr_items" {print $3}'
}
for i in "${HOSTS[@]}"; do
  ns=$PREFIX-h$i; addr=$SUBNET.1$i
  store_host=$(( i % 3 + 1 )); store_addr=$SUBNET.1$store_host
  before=$(store_items "$PREFIX-h$store_host" "$store_addr")
  ip netns exec "$ns" timeout 10 gearman -h "$addr" -p 4730 -b -f rollout_check "job on node$i" \
    || die "node$i: background submit failed"
  queued=$(store_items "$PREFIX-h$store_host" "$store_addr")
  [ "$queued" -gt "$before" ] || die "node$i: job not persisted in its store on h$store_host ($before -> $queued)"
  # A background job's result goes nowhere: the worker's command writes it to a file.
  ip netns exec "$ns" timeout 20 gearman -h "$addr" -p 4730 -w -c 1 -f rollout_check -- tee "$WORK/job-$i.out" >/dev/null \
    || die "node$i: worker got no job"
  out=$(cat "$WORK/job-$i.out" 2>/dev/null || true)
  [ "$out" = "job on node$i" ] || die "node$i: worker ran '$out'"
  after=$(store_items "$PREFIX-h$store_host" "$store_addr")
  [ "$after" -eq "$before" ] || die "node$i: store on h$store_host still holds the job ($after items)"
  say "node$i ($addr): job persisted in h$store_host's store ($before -> $queued -> $after items) and run by a worker: '$out'"
done

# --- 3. second run changes nothing --------------------------------------------------------------
t=$(date +%s.%N)
playbook site.yml "$WORK/site-2.log" || { tail -n 60 "$WORK/site-2.log" >&2; die "second site.yml failed"; }
SECOND=$(echo "$(date +%s.%N) - $t" | bc)
changed=$(recap_changed "$WORK/site-2.log")
sed -n '/PLAY RECAP/,$p' "$WORK/site-2.log" >&2
if [ "$changed" != 0 ]; then
  grep -B2 '^changed:' "$WORK/site-2.log" | head -40 >&2
  die "second site.yml run changed $changed things"
fi
say "site.yml second run: changed=0, ${SECOND}s"

# --- 4. check mode on the deployed cluster --------------------------------------------------
playbook site.yml "$WORK/site-check.log" --check || { tail -n 40 "$WORK/site-check.log" >&2; die "site.yml --check failed"; }
say "site.yml --check: ok, changed=$(recap_changed "$WORK/site-check.log")"

# --- 5. rolling restart -------------------------------------------------------------------------
if [ "${ROLLING:-1}" = 1 ]; then
  t=$(date +%s.%N)
  playbook rolling-restart.yml "$WORK/rolling.log" || { tail -n 60 "$WORK/rolling.log" >&2; die "rolling-restart.yml failed"; }
  say "rolling-restart.yml: every node restarted and serving again, $(echo "$(date +%s.%N) - $t" | bc)s"
  for i in "${HOSTS[@]}"; do
    addr=$SUBNET.1$i
    ip netns exec "$PREFIX-h$i" timeout 10 gearman -h "$addr" -p 4730 -b -f rollout_check "again $i" || die "node$i: submit after restart failed"
    ip netns exec "$PREFIX-h$i" timeout 20 gearman -h "$addr" -p 4730 -w -c 1 -f rollout_check -- tee "$WORK/again-$i.out" >/dev/null || die "node$i: no job after restart"
    out=$(cat "$WORK/again-$i.out" 2>/dev/null || true)
    [ "$out" = "again $i" ] || die "node$i after restart: '$out'"
  done
  say "jobs run through every node after the rolling restart"
fi
say "PASS: first run ${FIRST}s, second run ${SECOND}s (changed=0)"
