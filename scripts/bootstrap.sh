#!/usr/bin/env bash
# Install what gearctl needs on Debian 12: the services (Debian packages) and a virtualenv with
# the project and its test tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# haproxy: the /health check test (deploy/haproxy.cfg); prometheus: its promtool checks the
# alert rules (deploy/gearctl-alerts.yml). No smaller Debian 12 package ships promtool.
# systemd: only its systemd-analyze (tests/test_units.py checks the units in deploy/).
# php-cli, php-gearman: the PHP interop tests (tests/php/, tests/test_php_interop.py).
packages=(gearman-job-server gearman-tools memcached zookeeper default-jre-headless python3-venv iproute2
          haproxy prometheus systemd php-cli php-gearman)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing a package here starts no daemon we rely on; gearctl starts its own processes.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests run haproxy and promtool themselves: where systemd started the packages' own
  # services (a prometheus server on :9090, haproxy), stop and disable the ones installed now.
  if [ -d /run/systemd/system ]; then
    for service in haproxy prometheus; do
      if [[ " ${missing[*]} " == *" $service "* ]]; then
        systemctl disable --now "$service" >/dev/null 2>&1 || true
      fi
    done
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if ! .venv/bin/python -c "import cluster, pytest, hypothesis" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".[test]"
  touch .venv/.installed
fi
