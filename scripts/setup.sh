#!/usr/bin/env bash
# One-time (and re-runnable) set-up of everything millrace needs on a fresh Linux machine:
#   - checks Java 17+ and Maven, installs them with apt-get when run as root and they are missing;
#   - installs Mosquitto (MQTT broker), Chromium (dashboard browser tests), OpenSSL (the local CA of the
#     secured Kafka cluster) and Prometheus + Alertmanager (`stack up --with monitoring`) from Debian when possible;
#   - creates .venv with Python >= 3.11 and installs millrace with all extras;
#   - resolves the Kafka and Spark connector jars from Maven Central into the cache dir.
# Idempotent: a second run only checks. Set MILLRACE_SETUP_QUIET=1 for less output.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MILLRACE_VENV:-$ROOT/.venv}

say() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[setup] %s\033[0m\n' "$*" >&2; exit 1; }

apt_ready=0
apt_install() {
  # apt_install PKG... : install Debian packages when we can (root + apt-get), else return 1
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then return 1; fi
  if [ $apt_ready = 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
    apt_ready=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- system tools -------------------------------------------------------------------------------
if ! command -v java >/dev/null; then
  apt_install openjdk-17-jre-headless || die "Java 17+ is required: install it (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
fi
if ! command -v mvn >/dev/null; then
  apt_install maven || die "Maven is required to fetch the Kafka jars: install it (Debian/Ubuntu: apt-get install maven)"
fi
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v chromium >/dev/null || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)  # the local CA of `stack up --secure`
command -v prometheus >/dev/null || missing+=(prometheus)  # with promtool; `stack up --with monitoring`
command -v prometheus-alertmanager >/dev/null || missing+=(prometheus-alertmanager)  # with amtool
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" || say "could not install ${missing[*]} (not root or no apt-get)"
fi
unmet=()  # reported at the end: the MQTT, dashboard browser, secure-cluster and monitoring tests fail without these, they never skip
for tool in "${missing[@]}"; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || unmet+=("$tool")
done

# --- Python ---------------------------------------------------------------------------------------
PY=""
for cand in ${PYTHON:-} python3.11 python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PY=$cand; break
  fi
done
[ -n "$PY" ] || die "Python >= 3.11 is required (Debian/Ubuntu: apt-get install python3.11 python3.11-venv)"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.millrace-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing millrace and its dependencies into $VENV (the first time builds pyspark: a few minutes)"
  "$VENV/bin/pip" install -q --upgrade pip wheel
  "$VENV/bin/pip" install -q -e ".[all,dev]"
  touch "$stamp"
fi

# --- jars -----------------------------------------------------------------------------------------
say "resolving Kafka and Spark connector jars (cached after the first run)"
"$VENV/bin/millrace" setup
[ ${#unmet[@]} -eq 0 ] || die "missing ${unmet[*]}: the MQTT, dashboard browser and monitoring tests fail without it (Debian/Ubuntu: apt-get install ${unmet[*]})"
say "ready: activate with 'source .venv/bin/activate' or call .venv/bin/millrace"
