# Sourced by scripts/demo and scripts/test: make .venv match uv.lock, installing uv if needed.
# Needs only Python 3.11 and git on the machine; everything else comes from the lock file.

UV_VERSION=0.13.9
export UV_PYTHON_DOWNLOADS=never   # use the machine's Python 3.11, never fetch one
export DVC_NO_ANALYTICS=1

find_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      command -v "$candidate"; return 0
    fi
  done
  echo "error: Python 3.11 is required (python3.11 or python3 on PATH)" >&2
  return 1
}

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=$(command -v uv); return 0; fi
  local tools="${XDG_CACHE_HOME:-$HOME/.cache}/mlexp-ctrl/tools"
  if [ ! -x "$tools/bin/uv" ]; then
    echo "==> installing uv $UV_VERSION into $tools" >&2
    "$PYTHON" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  UV="$tools/bin/uv"
}

ensure_venv() {
  PYTHON=$(find_python)
  ensure_uv
  echo "==> syncing .venv with uv.lock" >&2
  # Bytecode compiled at install: local runs import the venv read-only from their sandbox,
  # where Python cannot cache it, and DVC + scikit-learn imports take twice as long without
  # it. The first sync compiles everything (a minute or two); later ones only what changed.
  "$UV" sync --frozen --all-extras --compile-bytecode --python "$PYTHON" --quiet
  export PATH="$PWD/.venv/bin:$PATH"
}

# The local run sandbox (bubblewrap): installed from the distribution when we are root,
# otherwise the command to run is printed.
ensure_sandbox() {
  if command -v bwrap >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing bubblewrap (the local run sandbox) with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1; } || true
  fi
  if ! command -v bwrap >/dev/null 2>&1; then
    echo "error: local runs execute in a bubblewrap sandbox; install it first:" >&2
    echo "  sudo apt-get install bubblewrap    (Debian/Ubuntu; dnf install bubblewrap on Fedora)" >&2
    return 1
  fi
}

# The browser of the ui test tier: Debian's chromium, driven by Playwright (which never
# downloads a browser of its own here). Installed with apt-get when we are root; otherwise
# the tier is skipped with the reason (a failure under CI=true, see tests/support/prereqs.py).
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing chromium (the ui test tier's browser) with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || true
  fi
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    echo "==> no chromium: the ui tier will be skipped (sudo apt-get install chromium)" >&2
  fi
}

# The images of the cluster tier (tests/cluster/test_images.py, built by scripts/build-images):
# podman with the runc runtime, and debootstrap for the local base image. Installed with
# apt-get when we are root; otherwise those tests are skipped with the reason (a failure
# under CI=true).
ensure_podman() {
  if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 &&
     { command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ]; }; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing podman, runc and debootstrap (the image tests) with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null 2>&1; } ||
      true
  fi
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    echo "==> no podman/runc: the image tests will be skipped (sudo apt-get install podman runc debootstrap)" >&2
  fi
}
