#!/usr/bin/env bash
# The project's two entry points on a fresh machine:
#   ./dev.sh example   set up and run the example project under gunicorn (4 workers)
#   ./dev.sh test      set up and run the whole test suite (what .ci/run calls) with psycopg 3,
#                      build and check the package, then the suite without its process tests
#                      on Django 6 with psycopg2 when Python >= 3.12 exists
#   ./dev.sh test ARGS one pytest run with those arguments (no Django 6 pass)
# Each installs what it needs: a virtualenv in .venv (extra "example" or "test"), the packages,
# PostgreSQL reachability, RabbitMQ with its STOMP plugin. Safe to run again: every step is
# idempotent.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  echo "no Python >= 3.11 found (set PYTHON=...)" >&2
  exit 1
}

ensure_venv() {  # extra: "example" (what the example project needs) or "test" (everything)
  local extra=$1 marker="$VENV/.installed-$1"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  # One marker per extra: reinstall only when that extra was never installed here, or the
  # package metadata changed since. "example" after "test" finds everything already there.
  if [ ! -f "$marker" ] || [ setup.cfg -nt "$marker" ]; then
    say "installing katello_events[$extra]"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[$extra]"
    touch "$marker"
  fi
}

describe_env() {  # python: the versions a test pass runs on, driver included
  "$1" -c 'import sys, django; from katello_events import pgdriver
print(f"Django {django.__version__}, Python {sys.version.split()[0]}, {pgdriver.describe()}")'
}

wait_for_port() {  # host port seconds what
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "$4 did not open $1:$2 within $3s" >&2
      return 1
    fi
    sleep 0.5
  done
}

ensure_postgres() {
  if ! (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null; then
    say "starting PostgreSQL"
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
    fi
  fi
  wait_for_port "$PG_HOST" "$PG_PORT" 60 PostgreSQL
}

ensure_stomp_broker() {
  if (exec 3<>/dev/tcp/127.0.0.1/61613) 2>/dev/null; then
    return
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      say "installing RabbitMQ"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
    say "starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_for_port 127.0.0.1 5672 120 RabbitMQ
  fi
  say "enabling RabbitMQ's STOMP plugin"
  rabbitmq-plugins enable rabbitmq_stomp >/dev/null
  wait_for_port 127.0.0.1 61613 120 "RabbitMQ STOMP"
}

ensure_chromium() {  # headless Chromium for tests/test_browser.py (Debian's package)
  if command -v chromium >/dev/null 2>&1; then
    return
  fi
  if [ "$(id -u)" -ne 0 ]; then
    say "chromium is missing and this is not root: the browser test will be skipped (apt-get install chromium)"
    return
  fi
  say "installing Chromium"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
    say "could not install chromium: the browser test will be skipped"
  fi
}

create_database() {  # name (through whichever driver is installed: psycopg 3 or psycopg2)
  "$VENV/bin/python" - "$1" <<'EOF'
import sys

from katello_events import pgdriver

name = sys.argv[1]
connection = pgdriver.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
with connection.cursor() as cursor:
    cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
    if cursor.fetchone() is None:
        cursor.execute(f'CREATE DATABASE "{name}"')
EOF
}

run_example() {
  ensure_venv example
  ensure_postgres
  ensure_stomp_broker
  create_database katello_events_example
  export DATABASE_URL=${DATABASE_URL:-postgres://postgres@$PG_HOST:$PG_PORT/katello_events_example}
  export CANDLEPIN_BROKER_URL=${CANDLEPIN_BROKER_URL:-stomp://guest:guest@127.0.0.1:61613}
  local bind=${GUNICORN_BIND:-127.0.0.1:8000}
  cd "$ROOT/example_project"
  "$VENV/bin/python" manage.py migrate --noinput -v0
  "$VENV/bin/python" manage.py seed_example
  say "About page:  http://$bind/about/"
  say "Ping API:    http://$bind/api/ping"
  # The printed command carries DATABASE_URL: without it the example project reads SQLite.
  say "CLI status:  (cd example_project && DATABASE_URL=$(printf %q "$DATABASE_URL") ../.venv/bin/python manage.py ping)"
  say "Stop with Ctrl-C."
  exec "$VENV/bin/gunicorn" -c gunicorn.conf.py -b "$bind" example_project.wsgi:application
}

check_package() {  # sdist and wheel into artifacts/dist, twine check, the wheel's contents
  # The wheel is built from the sdist (build's default), so a file missing from the sdist fails
  # here, and nothing is built inside the tree (only setuptools' egg-info is refreshed).
  local dist="$ROOT/artifacts/dist"
  rm -rf "$dist"
  "$VENV/bin/python" -m build --outdir "$dist" . >"$ROOT/artifacts/build.log" 2>&1 ||
    { cat "$ROOT/artifacts/build.log" >&2; return 1; }
  "$VENV/bin/twine" check --strict "$dist"/*
  "$VENV/bin/python" - "$dist"/*.whl <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel:
    names = wheel.namelist()
    metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
found = {
    "py.typed": "katello_events/py.typed" in names,
    "templates": any(n.startswith("katello_events/templates/katello_events/") and n.endswith(".html") for n in names),
    "migrations": "katello_events/migrations/0001_initial.py" in names,
}
problems = [f"missing {what}" for what, present in found.items() if not present]
problems += [
    f"a driver without an extra: {line}"
    for line in metadata.splitlines()
    if line.startswith("Requires-Dist: psycopg") and "extra ==" not in line
]
problems += [f"not ours: {n}" for n in names if not n.startswith("katello_events/") and ".dist-info/" not in n]
if problems:
    sys.exit(f"{sys.argv[1]}: " + "; ".join(problems))
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files; templates, migrations and py.typed included")
EOF
}

run_tests() {
  local django6_python="" django6_prep=""
  if [ $# -eq 0 ] && [ -z "${KATELLO_EVENTS_SKIP_DJANGO6:-}" ]; then
    django6_python=$(find_python_for_django6)
  fi
  mkdir -p "$ROOT/artifacts"
  if [ -n "$django6_python" ]; then
    # Its dependencies install while the main environment does; the project itself later, as
    # two editable installs at once would race in its egg-info.
    ensure_django6_dependencies "$django6_python" >"$ROOT/artifacts/django6-install.log" 2>&1 &
    django6_prep=$!
  fi
  ensure_venv test
  ensure_postgres
  ensure_stomp_broker
  ensure_chromium
  say "ruff"
  "$VENV/bin/ruff" check .
  say "mypy"
  "$VENV/bin/mypy" katello_events
  say "docs (mkdocs --strict)"
  "$VENV/bin/mkdocs" build --strict --quiet --site-dir "$ROOT/artifacts/site"
  say "package (build, twine check --strict, the wheel's contents)"
  check_package
  local status=0
  if [ $# -gt 0 ]; then
    say "pytest $* on $(describe_env "$VENV/bin/python")"
    "$VENV/bin/python" -m pytest --junitxml="$ROOT/artifacts/junit.xml" "$@" || status=$?
    [ $status -ne 5 ] || echo "pytest collected no tests" >&2
    return $status
  fi
  if [ -n "$django6_prep" ]; then
    say "waiting for the Django 6 test environment's installation (artifacts/django6-install.log)"
    if ! wait "$django6_prep"; then  # before any test: an install beside them would slow them
      cat "$ROOT/artifacts/django6-install.log" >&2
      echo "could not install the Django 6 test environment (log above)" >&2
      return 1
    fi
  fi
  # Most tests wait (on PostgreSQL, the broker, the servers they start and their own deadlines)
  # far more than they compute: two pytest workers halve their time. Those that restart the
  # broker or PostgreSQL ("serial", the chaos suite among them) run alone, one at a time.
  say "pytest, in-process tests (2 workers), on $(describe_env "$VENV/bin/python")"
  "$VENV/bin/python" -m pytest -m "not process and not serial" -n 2 --junitxml="$ROOT/artifacts/junit.xml" ||
    status=$?
  say "pytest, process tests (2 workers), on $(describe_env "$VENV/bin/python")"
  "$VENV/bin/python" -m pytest -m "process and not serial" -n 2 --junitxml="$ROOT/artifacts/junit-process.xml" ||
    status=$?
  say "pytest, serial tests (alone), on $(describe_env "$VENV/bin/python")"
  "$VENV/bin/python" -m pytest -m serial --junitxml="$ROOT/artifacts/junit-serial.xml" || status=$?
  if [ -n "$django6_prep" ]; then
    if [ $status -eq 0 ]; then
      ensure_django6_project
      run_django6_tests || status=$?
    fi
  elif [ -z "${KATELLO_EVENTS_SKIP_DJANGO6:-}" ]; then
    say "no Python >= 3.12 here: skipping the Django 6 pass"
  fi
  return $status
}

find_python_for_django6() {  # Django 6 needs Python >= 3.12
  local candidate
  for candidate in python3.14 python3.13 python3.12 \
    $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V -r); do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
}

DJANGO6_VENV="$ROOT/.venv-django6"
DJANGO6_MARKER="$DJANGO6_VENV/.installed-test-psycopg2"

django6_requirements() {  # python: install_requires and the test extra, psycopg2 for psycopg 3
  "$1" - <<'EOF'
import configparser

config = configparser.ConfigParser()
config.read("setup.cfg")
lines = config["options"]["install_requires"] + "\n" + config["options.extras_require"]["test"]
for line in lines.splitlines():
    requirement = line.split("#")[0].strip()
    if requirement and not requirement.startswith("psycopg"):
        print(requirement)
print("django>=6,<7")
# The main pass runs on psycopg 3; this one proves the app on the other driver (Django prefers
# psycopg 3 whenever it can import it, so it is not installed here at all).
print("psycopg2-binary>=2.9")
EOF
}

ensure_django6_dependencies() {  # python: everything but the project itself (run in the background)
  if [ ! -x "$DJANGO6_VENV/bin/python" ]; then
    "$1" -m venv "$DJANGO6_VENV"
  fi
  if [ ! -f "$DJANGO6_MARKER" ] || [ setup.cfg -nt "$DJANGO6_MARKER" ]; then
    say "installing the Django 6 test environment (psycopg2 in place of psycopg 3)"
    "$DJANGO6_VENV/bin/python" -m pip install --quiet --upgrade pip
    local requirements
    mapfile -t requirements < <(django6_requirements "$1")
    "$DJANGO6_VENV/bin/python" -m pip install --quiet "${requirements[@]}"
  fi
}

ensure_django6_project() {  # the project, editable, once the main pass no longer builds in the tree
  if [ ! -f "$DJANGO6_MARKER" ] || [ setup.cfg -nt "$DJANGO6_MARKER" ]; then
    "$DJANGO6_VENV/bin/python" -m pip install --quiet --no-deps -e .
    touch "$DJANGO6_MARKER"
  fi
}

run_django6_tests() {  # the suite without its process tests, in the environment made above
  local status=0
  say "pytest, in-process tests (2 workers), on $(describe_env "$DJANGO6_VENV/bin/python")"
  "$DJANGO6_VENV/bin/python" -m pytest -q -m "not process and not serial" -n 2 -p no:cacheprovider \
    --junitxml="$ROOT/artifacts/junit-django6.xml" || status=$?
  say "pytest, serial tests, on $(describe_env "$DJANGO6_VENV/bin/python")"
  "$DJANGO6_VENV/bin/python" -m pytest -q -m "serial and not process" -p no:cacheprovider \
    --junitxml="$ROOT/artifacts/junit-django6-serial.xml" || status=$?
  return $status
}

case "${1:-}" in
  example) shift; run_example "$@" ;;
  test) shift; run_tests "$@" ;;
  *) echo "usage: ./dev.sh example | ./dev.sh test [pytest args]" >&2; exit 2 ;;
esac
