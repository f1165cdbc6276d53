#!/usr/bin/env bash
# make rollout-test: lint the playbooks (ansible-lint), roll gearctl out with Ansible
# (ansible/site.yml) over ssh to three "hosts" (network namespaces with their own addresses on a
# bridge, an sshd in each), check that a real gearman job runs through every node, that the
# cluster's znodes carry digest ACLs (random credentials, passed through ansible-vault), that the
# firewall lets only the cluster's hosts reach the stores, ZooKeeper and gearmand (and only the
# monitoring host the metrics; a fourth host outside the cluster is refused), that a second run
# and a --check run change nothing, run a failover drill (2,000 numbered jobs, the whole node1
# killed with SIGKILL, every job counted: none lost, none duplicated), change a setting that
# restarts every agent and one that restarts every ZooKeeper member while a workload runs (no
# job lost or doubled, some node serving at every sample) and a rolling restart; then tear
# everything down, even on failure.
#
# Needs root. Hosts: gcr-h1..3 = 10.77.0.11..13/24 on bridge gcr-br0 (10.77.0.1, root namespace,
# where ansible runs; the clients' and monitoring host); gcr-h4 = 10.77.0.14, not in the cluster. Traffic stays on that bridge. The namespaces share this machine's
# filesystem, so each host's files live under $WORK/hosts/hN (gearctl_host_root) and services run
# under deploy/gearctl-runner (no systemd here).
# Env: KEEP=1 keeps $WORK (logs) after the run; ROLLING=0 skips the rolling-restart step;
# LINT=0 skips ansible-lint; IDEMPOTENT=0 skips the second and the --check run; DRILL_JOBS (2000)
# sizes the failover drill; TWIN=1 (the default) gives every node twin stores (gearctl_store_twin)
# and checks the firewall on the twin port (11212) too; TWIN=0 rolls out one store per node.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PREFIX=gcr
BRIDGE=$PREFIX-br0
SUBNET=10.77.0
HOSTS=(1 2 3)
OUTSIDER=4   # gcr-h4: a host on the same network that is not part of the cluster
LOCK=/run/gearctl-rollout.lock
T0=$(date +%s.%N)

# awk, not bc: say/die run before the package step installs bc.
say() { printf '[rollout %6.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, sshd, apt-get)"
exec 9>"$LOCK"
flock -n 9 || die "another rollout test holds $LOCK"

# --- prerequisites ------------------------------------------------------------------------------
packages=(openssh-server openssh-client iproute2 bc gearman-job-server gearman-tools memcached
          zookeeper default-jre-headless python3-venv python3-apt tar nftables logrotate)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # No package's daemon may start on this machine (sshd on :22, memcached, gearmand): the test
  # starts its own, inside its namespaces. policy-rc.d 101 = "action forbidden".
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 0755 "$policy"
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || rm -f "$policy"
fi
[ -x "$REPO/.venv/bin/python" ] || "$REPO/scripts/bootstrap.sh"
# ansible-core and ansible-lint, pinned in pyproject.toml's `rollout` extra.
if ! "$REPO/.venv/bin/ansible-playbook" --version >/dev/null 2>&1 \
   || ! "$REPO/.venv/bin/ansible-lint" --version >/dev/null 2>&1; then
  (cd "$REPO" && .venv/bin/python -m pip install -q -e '.[rollout]')
fi
ANSIBLE_PLAYBOOK=$REPO/.venv/bin/ansible-playbook
TIMINGS=()
LAST=
timed() {  # timed LABEL START: how long a step took, in $LAST and the summary
  LAST=$(printf '%.1f' "$(echo "$(date +%s.%N) - $2" | bc)")
  TIMINGS+=("$1 ${LAST}s")
}

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
  [ -z "${LINT_PID:-}" ] || kill "$LINT_PID" 2>/dev/null
  [ -z "${WORKLOAD_PID:-}" ] || kill "$WORKLOAD_PID" 2>/dev/null
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

# --- 0. lint (in the background, beside the wheelhouse build and the hosts' set-up) -------------
LINT_PID=
if [ "${LINT:-1}" = 1 ]; then
  (
    t=$(date +%s.%N)
    cd "$REPO/ansible"
    ANSIBLE_HOME="$WORK/ansible-home" "$REPO/.venv/bin/ansible-lint" --offline -q --nocolor \
      --project-dir "$REPO/ansible" >"$WORK/lint.log" 2>&1 && rc=0 || rc=$?
    rm -rf "$REPO/ansible/.ansible"
    echo "$(date +%s.%N) - $t" | bc >"$WORK/lint.seconds"
    exit $rc
  ) &
  LINT_PID=$!
fi

# --- wheels for the hosts (they reach no package index) -----------------------------------------
say "building the wheelhouse"
t=$(date +%s.%N)
# Built from a copy of the working tree, so the build leaves nothing in the repository.
mkdir -p "$WORK/src"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/cluster" "$WORK/src/"
"$REPO/.venv/bin/python" -m pip wheel -q -w "$WORK/wheels" "$WORK/src" 2>&1 | grep -v "^WARNING: Location" >&2 || true
ls "$WORK"/wheels/gearctl-*.whl >/dev/null || die "no gearctl wheel built"
timed wheelhouse "$t"

# --- secrets: random ZooKeeper credentials, vault-encrypted with a random vault password --------
(umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$WORK/vault-pass")
ZK_PASSWORD=$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')
mkdir -p "$WORK/group_vars/all"
"$REPO/.venv/bin/ansible-vault" encrypt_string --vault-password-file "$WORK/vault-pass" \
  --name vault_gearctl_zookeeper_password "$ZK_PASSWORD" >"$WORK/group_vars/all/vault.yml" 2>/dev/null \
  || die "ansible-vault encrypt_string failed"

# --- network: bridge + one namespace per host ---------------------------------------------------
say "creating hosts"
ip link add "$BRIDGE" type bridge
ip addr add "$SUBNET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
for i in "${HOSTS[@]}" "$OUTSIDER"; do
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
  # The standard directories a Debian host has (the roles create only their own below them).
  for d in etc etc/logrotate.d opt run usr/local/sbin var/lib var/log; do
    mkdir -p "$WORK/hosts/h$i/$d"
  done
  chmod -R 0755 "$WORK/hosts/h$i"
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
    gearctl_zookeeper_password: "{{ vault_gearctl_zookeeper_password }}"
    gearctl_service_manager: runner
    gearctl_wheelhouse: $WORK/wheels
    zookeeper_tick_ms: 500
    zookeeper_heap_mb: 128
    memcached_memory_mb: 64
    gearctl_store_twin: $([ "${TWIN:-1}" = 1 ] && echo true || echo false)
    gearctl_expected_queue_depth: 10000
    gearctl_hang_checks: 3
    firewall_client_networks: [$SUBNET.1]
    firewall_monitoring_hosts: [$SUBNET.1]
    firewall_zookeeper_clients: [$SUBNET.1]
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
export ANSIBLE_HOME=$WORK/ansible-home ANSIBLE_VAULT_PASSWORD_FILE=$WORK/vault-pass
ZOOKEEPER=$SUBNET.11:2181,$SUBNET.12:2181,$SUBNET.13:2181

playbook() {  # playbook NAME LOG [args]: run it, keep its output (each line timed), return its status
  local name=$1 log=$2; shift 2
  (cd "$REPO/ansible" && "$ANSIBLE_PLAYBOOK" -i "$WORK/inventory.yml" "$name" "$@") 2>&1 \
    | while IFS= read -r line; do printf '%s %s\n' "$(date +%T.%N | cut -c1-12)" "$line"; done >"$log"
  return "${PIPESTATUS[0]}"
}
recap_changed() {  # the sum of changed= over the play recap
  sed -n '/PLAY RECAP/,$p' "$1" | grep -o 'changed=[0-9]*' | cut -d= -f2 | paste -sd+ | bc
}

if [ -n "$LINT_PID" ]; then
  wait "$LINT_PID" || { LINT_PID=; cat "$WORK/lint.log" >&2; die "ansible-lint failed"; }
  LINT_PID=
  TIMINGS+=("lint $(printf '%.1f' "$(cat "$WORK/lint.seconds")")s")
  say "ansible-lint: passed (${TIMINGS[-1]#lint })"
fi

# --- 1. first rollout ---------------------------------------------------------------------------
t=$(date +%s.%N)
say "site.yml (first run)"
playbook site.yml "$WORK/site-1.log" || { tail -n 60 "$WORK/site-1.log" >&2; die "site.yml failed"; }
timed "site.yml first run" "$t"; FIRST=$LAST
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
  up=$(ip netns exec "$ns" timeout 5 bash -c "exec 3<>/dev/tcp/$addr/9400; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3" \
    | awk '$1 ~ /^gearctl_gearmand_up/ {print $2}')
  [ "$up" = "1.0" ] || die "node$i: metrics on $addr:9400 do not say gearmand is up ('$up')"
done
say "metrics: every agent serves gearctl_gearmand_up 1.0 on its intranet address"

# --- 3. second run changes nothing --------------------------------------------------------------
if [ "${IDEMPOTENT:-1}" = 1 ]; then
t=$(date +%s.%N)
playbook site.yml "$WORK/site-2.log" || { tail -n 60 "$WORK/site-2.log" >&2; die "second site.yml failed"; }
timed "site.yml second run" "$t"; SECOND=$LAST
changed=$(recap_changed "$WORK/site-2.log")
sed -n '/PLAY RECAP/,$p' "$WORK/site-2.log" >&2
if [ "$changed" != 0 ]; then
  grep -B2 '^changed:' "$WORK/site-2.log" | head -40 >&2
  die "second site.yml run changed $changed things"
fi
say "site.yml second run: changed=0, ${SECOND}s"

# --- 4. check mode on the deployed cluster --------------------------------------------------
t=$(date +%s.%N)
playbook site.yml "$WORK/site-check.log" --check || { tail -n 40 "$WORK/site-check.log" >&2; die "site.yml --check failed"; }
changed=$(recap_changed "$WORK/site-check.log")
if [ "$changed" != 0 ]; then
  grep -B2 '^changed:' "$WORK/site-check.log" | head -40 >&2
  die "site.yml --check reports $changed changes on the deployed cluster"
fi
timed "site.yml --check" "$t"
say "site.yml --check: changed=0 (${LAST}s)"
fi

# --- 5. hardening: ACLs on the cluster's znodes, secret files 0600, services' users ------------
for i in "${HOSTS[@]}"; do
  for f in etc/gearctl/zk.secret etc/gearctl/agent.toml; do
    mode=$(stat -c '%a %U' "$WORK/hosts/h$i/$f")
    [ "$mode" = "600 gearman" ] || die "h$i: $f is '$mode', not '600 gearman'"
  done
done
ps -o user:20=,args= -p "$(ip netns pids "$PREFIX-h1" | paste -sd,)" | grep -v gearctl-runner >"$WORK/ps-h1.txt"
# Each service as its own user, gearmand and memcached bound to the host's intranet address.
for check in "gearman gearmand --listen $SUBNET.11 " "gearman bin/gearctl agent run" \
             "memcache /usr/bin/memcached -l $SUBNET.11 " "zookeeper QuorumPeerMain"; do
  user=${check%% *} what=${check#* }
  users=$(grep -F -- "$what" "$WORK/ps-h1.txt" | awk '{print $1}' | sort -u | paste -sd,)
  [ "$users" = "$user" ] || die "h1: '$what' runs as '$users', not '$user'"
done
"$REPO/.venv/bin/python" - "$ZOOKEEPER" "$ZK_PASSWORD" <<'PY' || die "ZooKeeper ACL check failed"
import sys
from kazoo.exceptions import NoAuthError
from cluster.zkclient import ZkCredentials, make_client
hosts, password = sys.argv[1:]
for creds in (None, ZkCredentials("gearctl", password + "x")):
    zk = make_client(hosts, 4.0, creds)
    zk.start(timeout=10)
    zk.get("/gearctl/rollout/members/node1")  # reading needs no credentials
    try:
        zk.create("/gearctl/rollout/members/intruder", b"{}", ephemeral=True)
        sys.exit("a client without the credentials created a member record")
    except NoAuthError:
        pass
    zk.stop()
zk = make_client(hosts, 4.0, ZkCredentials("gearctl", password))
zk.start(timeout=10)
zk.create("/gearctl/rollout/acl-probe", b"")
zk.delete("/gearctl/rollout/acl-probe")
zk.stop()
PY
"$REPO/.venv/bin/gearctl" acl check --zookeeper "$ZOOKEEPER" --cluster rollout >"$WORK/acl-check.out" \
  || { cat "$WORK/acl-check.out" >&2; die "gearctl acl check: znodes writable by anyone"; }
say "hardening: secrets 0600, services as gearman/memcache/zookeeper, znodes writable only with the credentials (acl check: $(tail -n 1 "$WORK/acl-check.out"))"

# --- 5b. firewall: who reaches what (nftables table inet gearctl on every host) ----------------
talk() {  # talk NS ADDR PORT REQUEST: send REQUEST from namespace NS (root namespace: -), print
          # the reply (what came within 2 s; gearmand keeps the connection open); always status 0
  local run=(ip netns exec "$1")
  if [ "$1" = - ]; then run=(); fi
  { "${run[@]}" timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3 || exit 9; printf '$4' >&3; timeout 2 cat <&3" 2>/dev/null || true; } | tr -d '\r'
}
outsider=$PREFIX-h$OUTSIDER
STORE_PORTS=(11211)
[ "${TWIN:-1}" = 1 ] && STORE_PORTS+=(11212)  # each node's twin store: store port + 1
checks=("$SUBNET.11 2181 srvr ZooKeeper" "$SUBNET.11 9400 GET /metrics HTTP/1.0\r\n\r\n metrics"
        "$SUBNET.11 4730 status\r\n gearmand")
for port in "${STORE_PORTS[@]}"; do checks+=("$SUBNET.12 $port flush_all\r\nquit\r\n store"); done
for check in "${checks[@]}"; do
  read -r addr port request <<<"${check% *}"; what=${check##* }
  reply=$(talk "$outsider" "$addr" "$port" "$request")
  [ -z "$reply" ] || die "firewall: h$OUTSIDER (not in the cluster) reached the $what on $addr:$port: '${reply:0:60}'"
  if ip netns exec "$outsider" timeout 3 bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null; then
    die "firewall: h$OUTSIDER could connect to the $what on $addr:$port"
  fi
done
# The cluster's own hosts (and the controller as clients' and monitoring host) still get through.
for port in "${STORE_PORTS[@]}"; do
  [ -n "$(talk "$PREFIX-h1" "$SUBNET.13" "$port" 'stats\r\nquit\r\n' | grep curr_items)" ] || die "firewall: h1 cannot reach h3's store on port $port"
done
talk "$PREFIX-h2" "$SUBNET.11" 2181 srvr | grep '^Mode:' >/dev/null || die "firewall: h2 cannot reach ZooKeeper on h1"
talk "$PREFIX-h3" "$SUBNET.11" 4730 'status\r\n' | grep '^\.$' >/dev/null || die "firewall: h3 cannot reach gearmand on h1"
talk - "$SUBNET.11" 9400 'GET /metrics HTTP/1.0\r\n\r\n' | grep '^gearctl_gearmand_up' >/dev/null || die "firewall: the monitoring host gets no metrics"
[ -z "$(talk "$PREFIX-h2" "$SUBNET.11" 9400 'GET /metrics HTTP/1.0\r\n\r\n')" ] || die "firewall: h2 (not a monitoring host) got metrics"
ip netns exec "$PREFIX-h1" logrotate -d "$WORK/hosts/h1/etc/logrotate.d/gearctl" >"$WORK/logrotate.out" 2>&1 \
  || { cat "$WORK/logrotate.out" >&2; die "logrotate rejects the agent's rotation"; }
say "firewall: h$OUTSIDER gets no store (flush_all; ports ${STORE_PORTS[*]}), ZooKeeper, metrics or gearmand; the cluster's hosts and the monitoring host do"

# --- 6. failover drill: node1 killed (agent + gearmand, SIGKILL) with 2,000 jobs queued -------
t=$(date +%s.%N)
"$REPO/.venv/bin/python" "$REPO/tests/rollout/failover.py" --zookeeper "$ZOOKEEPER" \
  --cluster rollout --node node1 --jobs "${DRILL_JOBS:-2000}" >"$WORK/failover.out" \
  || { cat "$WORK/failover.out" >&2; die "failover drill: jobs lost or duplicated (or no recovery)"; }
timed "failover drill" "$t"
say "failover drill (${LAST}s): $(cat "$WORK/failover.out")"

# --- 7. a settings change under load: agents and ZooKeeper members restart one at a time -------
zk_mode() {  # zk_mode I: host I's ZooKeeper mode (leader, follower)
  talk "$PREFIX-h$1" "$SUBNET.1$1" 2181 srvr | sed -n 's/^Mode: //p'
}
leader=
for i in "${HOSTS[@]}"; do [ "$(zk_mode "$i")" = leader ] && leader=h$i; done
[ -n "$leader" ] || die "no ZooKeeper leader before the change"
t=$(date +%s.%N)
"$REPO/.venv/bin/python" "$REPO/tests/rollout/workload.py" \
  --servers "$SUBNET.11:4730,$SUBNET.12:4730,$SUBNET.13:4730" >"$WORK/workload.out" 2>"$WORK/workload.err" &
WORKLOAD_PID=$!
sleep 2
# A new heap restarts every ZooKeeper member; a new agent setting restarts every agent.
sed -i 's/zookeeper_heap_mb: 128/zookeeper_heap_mb: 144/; s/gearctl_hang_checks: 3/gearctl_hang_checks: 4/' "$WORK/inventory.yml"
playbook site.yml "$WORK/site-change.log" || { tail -n 60 "$WORK/site-change.log" >&2; die "site.yml with changed settings failed"; }
sleep 2
kill -TERM "$WORKLOAD_PID"
wait "$WORKLOAD_PID" && workload_rc=0 || workload_rc=$?
WORKLOAD_PID=
timed "change under load" "$t"
cat "$WORK/workload.out" >&2
[ "$workload_rc" = 0 ] || { cat "$WORK/workload.err" >&2; die "workload during the rollout: a job lost or doubled, or no node serving"; }
# The order of the restarts, from the play log: "<task> <host>" per restart.
restarts=$(awk '/TASK \[/ {task = $0} /^[0-9:.]+ changed: \[/ {
    if (task ~ /Restart ZooKeeper \(gearctl-runner\)/) print "zookeeper", $3
    if (task ~ /Restart the agent \(gearctl-runner\)/) print "agent", $3
    if (task ~ /Pause automatic take-overs/) print "pause", $3
    if (task ~ /Resume automatic take-overs/) print "resume", $3 }' "$WORK/site-change.log" | tr -d '[]')
echo "$restarts" >"$WORK/restarts.txt"
zk_order=$(awk '$1 == "zookeeper" {print $2}' "$WORK/restarts.txt" | paste -sd' ')
agent_order=$(awk '$1 == "agent" {print $2}' "$WORK/restarts.txt" | paste -sd' ')
[ "$(wc -w <<<"$zk_order")" = 3 ] || die "ZooKeeper members restarted: '$zk_order', not all 3"
[ "${zk_order##* }" = "$leader" ] || die "ZooKeeper restarts '$zk_order' did not end with the leader $leader"
[ "$(wc -w <<<"$agent_order")" = 3 ] || die "agents restarted: '$agent_order', not all 3"
takeovers() {  # "paused" or "automatic" (the pause znode is absent)
  "$REPO/.venv/bin/python" -c '
import sys
from cluster.zkclient import make_client
from cluster.coord import ClusterPaths
zk = make_client(sys.argv[1], 4.0)
zk.start(timeout=10)
print("paused" if zk.exists(ClusterPaths("rollout").takeover_paused) else "automatic")
zk.stop()' "$ZOOKEEPER"
}
paused=$(awk '$1 == "pause"' "$WORK/restarts.txt" | wc -l)
resumed=$(awk '$1 == "resume"' "$WORK/restarts.txt" | wc -l)
[ "$paused" = 6 ] && [ "$resumed" = 6 ] || die "take-overs paused $paused and resumed $resumed times, not 6 (one per restart)"
[ "$(takeovers)" = automatic ] || die "take-overs are still paused after site.yml"
say "change under load (${LAST}s): ZooKeeper restarted $zk_order (leader $leader last), agents $agent_order; $(head -n 2 "$WORK/workload.out" | paste -sd' ')"

# --- 8. rolling restart -------------------------------------------------------------------------
if [ "${ROLLING:-1}" = 1 ]; then
  t=$(date +%s.%N)
  playbook rolling-restart.yml "$WORK/rolling.log" || { tail -n 60 "$WORK/rolling.log" >&2; die "rolling-restart.yml failed"; }
  timed "rolling restart" "$t"
  say "rolling-restart.yml: every node restarted and serving again, ${LAST}s"
  for i in "${HOSTS[@]}"; do
    addr=$SUBNET.1$i
    ip netns exec "$PREFIX-h$i" timeout 10 gearman -h "$addr" -p 4730 -b -f rollout_check "again $i" || die "node$i: submit after restart failed"
    ip netns exec "$PREFIX-h$i" timeout 20 gearman -h "$addr" -p 4730 -w -c 1 -f rollout_check -- tee "$WORK/again-$i.out" >/dev/null || die "node$i: no job after restart"
    out=$(cat "$WORK/again-$i.out" 2>/dev/null || true)
    [ "$out" = "again $i" ] || die "node$i after restart: '$out'"
  done
  [ "$(takeovers)" = automatic ] || die "take-overs are still paused after rolling-restart.yml"
  say "jobs run through every node after the rolling restart (take-overs resumed)"
fi
say "timings: $(IFS=,; echo "${TIMINGS[*]}" | sed 's/,/, /g')"
timed total "$T0"
say "PASS: first run ${FIRST}s, second run ${SECOND:-skipped (IDEMPOTENT=0)}${SECOND:+s (changed=0)}, total ${LAST}s"
