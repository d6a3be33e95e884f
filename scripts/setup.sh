#!/usr/bin/env bash
# Installs everything rlhf.cpp needs on a Debian 12 machine; safe to rerun (each step checks
# first). Then configures and builds with CMake presets.
#   scripts/setup.sh            install + build
#   scripts/setup.sh --no-build install only
# Environment:
#   Torch_DIR=...      use an official libtorch archive instead of the torch wheel
#   RLHF_VENV=...      where the Python environment lives (default: a per-user cache shared
#                      by all checkouts, linked as .venv; torch is 3 GB, installed once)
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
[ "${1:-}" = "--no-build" ] && build=0

say() { printf '==> %s\n' "$*"; }

# 1. Debian packages (compiler, CMake, the -dev libraries of DESIGN.md).
pkgs=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
      libgloo-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libpcre2-dev libsqlite3-dev
      libcpp-httplib-dev liblua5.4-dev zlib1g-dev libgtest-dev libgmock-dev libbenchmark-dev
      chromium chromium-driver)  # the last two: browser tests of the labeling page and reports
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# 2. Python environment with the torch wheel (libtorch) and the peers used in tests.
venv="${RLHF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rlhf.cpp/venv}"
python_bin="$(command -v python3)"
if [ ! -x "$venv/bin/python" ]; then
  say "creating Python environment in $venv"
  mkdir -p "$(dirname "$venv")"
  "$python_bin" -m venv "$venv"
fi
stamp="$venv/.rlhf-requirements"
if ! cmp -s scripts/requirements.txt "$stamp"; then
  say "installing Python packages (torch, transformers, tokenizers, ...)"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt "$stamp"
fi
if [ "$(readlink -f .venv 2>/dev/null)" != "$(readlink -f "$venv")" ]; then
  [ -L .venv ] && rm .venv
  [ -e .venv ] || ln -s "$venv" .venv
fi

# 3. Data: the tests read ../shared/data (or $RLHF_DATA); nothing is downloaded at test time.
data="${RLHF_DATA:-../shared/data}"
if [ ! -f "$data/stories260K/stories260K.gguf" ]; then
  cat >&2 <<MSG
warning: $data/stories260K is missing. On a connected machine, scripts/get_data.sh DIR
fetches the default data sets into DIR (checked against their SHA-256); then set
RLHF_DATA=DIR. README.md ("Data") says where each file is published.
MSG
fi

# 4. Configure and build.
if [ $build -eq 1 ]; then
  say "building"
  cmake --preset default >/dev/null
  cmake --build --preset default
fi
