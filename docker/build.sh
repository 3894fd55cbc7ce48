#!/usr/bin/env bash
# Build cryoflow's container image with podman (or docker), without a container registry.
#
#   docker/build.sh            cryoflow:cpu   (the image tools/*.cwl name in their DockerRequirement hint)
#   docker/build.sh --cuda     cryoflow:cuda  (torch==VERSION+cu128 from download.pytorch.org/whl/cu128;
#                              PyPI's Linux torch is a CUDA build too, see docker/README.md)
#   docker/build.sh --force    rebuild even when the image is up to date
#   docker/build.sh --hash     print the source hash the image would carry, build nothing
#
# 1. Base image cryoflow-base:bookworm: `debootstrap --variant=minbase bookworm` with python3 and
#    python3-venv, imported by `podman import` (needs root and debootstrap). Made once and kept;
#    BASE=IMAGE builds on another image with python3.11 instead (e.g. BASE=docker.io/library/
#    python:3.11-slim-bookworm where a registry is reachable; ENGINE=docker needs that).
# 2. Wheels: `pip wheel` of cryoflow and all its dependencies into the build context, torch pinned
#    by TORCH_SPEC (default: the torch of $PYTHON when it is a +cpu build, else torch==2.13.0+cpu;
#    a machine whose pip does not find that wheel sets PIP_EXTRA="--extra-index-url
#    https://download.pytorch.org/whl/cpu"). The image is built from these wheels alone
#    (pip --no-index), so it cannot pull a CUDA torch. Dependency wheels are cached in
#    $CACHE/wheels-<hash of the dependency list and TORCH_SPEC>.
# 3. `podman build` with the wheels bind-mounted for the install steps (no copy left in a layer):
#    one layer with the dependencies (reused while the dependency list is unchanged), one with
#    cryoflow (seconds to redo). The image is labelled with a hash of what goes into it (pyproject.toml, cryoflow/, reports/,
#    tools/, workflows/, docs/graphs/, the Dockerfile, TORCH_SPEC, the base image id); when the
#    image already carries that hash nothing is rebuilt, so CI pays for a build only when the
#    sources changed.
#
# Environment: ENGINE (podman), IMAGE (cryoflow:cpu), BASE, PYTHON (.venv/bin/python, else python3),
# TORCH_SPEC, PIP_EXTRA, CACHE (~/.cache/cryoflow-image), MIRROR (http://deb.debian.org/debian).
# Rootful podman in a VM or container without systemd: when /etc/containers/containers.conf is
# missing and CONTAINERS_CONF unset, docker/containers.conf is used (runc, cgroupfs, file events).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
FLAVOUR=cpu
FORCE=0
ONLY_HASH=0
for arg in "$@"; do
  case "$arg" in
    --cuda) FLAVOUR=cuda ;;
    --force) FORCE=1 ;;
    --hash) ONLY_HASH=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

ENGINE="${ENGINE:-podman}"
IMAGE="${IMAGE:-cryoflow:$FLAVOUR}"
BASE_DEFAULT="localhost/cryoflow-base:bookworm"
BASE="${BASE:-$BASE_DEFAULT}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
CACHE="${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cryoflow-image}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
DOCKERFILE="$HERE/Dockerfile"
[ "$FLAVOUR" = cuda ] && DOCKERFILE="$HERE/Dockerfile.cuda"

die() { echo "build.sh: $*" >&2; exit 2; }
say() { echo "[build.sh $(date +%H:%M:%S)] $*" >&2; }
command -v "$ENGINE" >/dev/null || die "$ENGINE not found (Debian: apt-get install podman)"
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] && [ ! -e /etc/containers/containers.conf ]; then
  export CONTAINERS_CONF="$HERE/containers.conf"
fi

if [ -z "${TORCH_SPEC:-}" ]; then
  installed="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
  if [ "$FLAVOUR" = cpu ]; then
    case "$installed" in *+cpu) TORCH_SPEC="torch==$installed" ;; *) TORCH_SPEC="torch==2.13.0+cpu" ;; esac
  else
    version="${installed%%+*}"
    TORCH_SPEC="torch==${version:-2.13.0}+cu128"
    PIP_EXTRA="${PIP_EXTRA:---extra-index-url https://download.pytorch.org/whl/cu128}"
  fi
fi

image_id() { "$ENGINE" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# --- 1. base image ----------------------------------------------------------------------------
make_base() {
  [ "$BASE" = "$BASE_DEFAULT" ] || die "base image $BASE not found (pull it, or leave BASE unset to make one with debootstrap)"
  command -v debootstrap >/dev/null || die "debootstrap not found (Debian: apt-get install debootstrap), or set BASE=IMAGE"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root to make the base image (or set BASE=IMAGE)"
  local rootfs
  rootfs="$(mktemp -d "${TMPDIR:-/var/tmp}/cryoflow-rootfs.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$rootfs'" EXIT
  say "base image: debootstrap --variant=minbase bookworm (python3, python3-venv) from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/dev/*
  say "base image: podman import -> $BASE"
  tar -C "$rootfs" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}

# --- the hash of what goes into the image -----------------------------------------------------
source_hash() {
  (
    cd "$ROOT"
    find pyproject.toml cryoflow reports tools workflows docs/graphs "$DOCKERFILE" -type f \
      -not -path '*/__pycache__/*' -not -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    echo "$TORCH_SPEC ${PIP_EXTRA:-} $FLAVOUR"
    echo "base $1"
  ) | sha256sum | cut -c1-16
}

base_id="$(image_id "$BASE")"
if [ "$ONLY_HASH" = 1 ]; then
  source_hash "$base_id"
  exit 0
fi
start=$(date +%s)
if [ -z "$base_id" ]; then
  make_base
  base_id="$(image_id "$BASE")"
  say "base image ready ($(( $(date +%s) - start )) s)"
fi
hash="$(source_hash "$base_id")"
current="$("$ENGINE" image inspect --format '{{ index .Labels "org.cryoflow.source-hash" }}' "$IMAGE" 2>/dev/null || true)"
if [ "$FORCE" = 0 ] && [ "$current" = "$hash" ]; then
  say "$IMAGE is up to date (source hash $hash); --force rebuilds it"
  echo "$IMAGE"
  exit 0
fi

# --- 2. wheels --------------------------------------------------------------------------------
deps="$("$PYTHON" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$ROOT/pyproject.toml")"
deps_hash="$(printf '%s\n%s %s\n' "$deps" "$TORCH_SPEC" "${PIP_EXTRA:-}" | sha256sum | cut -c1-16)"
wheels="$CACHE/wheels-$deps_hash"
if [ ! -e "$wheels/.complete" ]; then
  say "wheels: pip wheel $TORCH_SPEC + cryoflow's dependencies -> $wheels"
  mkdir -p "$wheels"
  # shellcheck disable=SC2086
  printf '%s\n' "$deps" | "$PYTHON" -m pip wheel --quiet --wheel-dir "$wheels" ${PIP_EXTRA:-} "$TORCH_SPEC" -r /dev/stdin
  touch "$wheels/.complete"
fi
context="$(mktemp -d "${TMPDIR:-/var/tmp}/cryoflow-context.XXXXXX")"
trap 'rm -rf "$context"' EXIT
mkdir "$context/wheels" "$context/cryoflow"
cp -l "$wheels"/*.whl "$context/wheels/" 2>/dev/null || cp "$wheels"/*.whl "$context/wheels/"
printf '%s\n%s\n' "$deps" "$TORCH_SPEC" >"$context/wheels/requirements.txt"
say "wheels: cryoflow from $ROOT"
# from a copy of the sources, so the build leaves nothing (build/, *.egg-info) in the checkout
mkdir -p "$context/src/docs"
(cd "$ROOT" && cp -r pyproject.toml README.md cryoflow reports tools workflows "$context/src/" && cp -r docs/graphs "$context/src/docs/")
find "$context/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$context/cryoflow" "$context/src" >/dev/null 2>&1 \
  || "$PYTHON" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$context/cryoflow" "$context/src" >&2
rm -rf "$context/src"
ls "$context"/cryoflow/cryoflow-*.whl >/dev/null 2>&1 || die "pip wheel made no cryoflow wheel"

# --- 3. the image -----------------------------------------------------------------------------
old_id="$(image_id "$IMAGE")"
say "image: $ENGINE build -> $IMAGE (base $BASE, $TORCH_SPEC, source hash $hash)"
layers=()
[ "$ENGINE" = podman ] && layers=(--layers)  # podman keeps intermediate layers only when asked
"$ENGINE" build --quiet "${layers[@]}" --file "$DOCKERFILE" --build-arg "BASE=$BASE" \
  --build-arg "DEPS_HASH=$deps_hash" --build-arg "SOURCE_HASH=$hash" \
  --tag "$IMAGE" "$context" >/dev/null
old_id="$(printf '%s' "$old_id" | sed 's/^sha256://')"
new_id="$(image_id "$IMAGE" | sed 's/^sha256://')"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  "$ENGINE" rmi "$old_id" >/dev/null 2>&1 || true  # the image this build replaced (its layers stay cached)
fi
say "$IMAGE built in $(( $(date +%s) - start )) s"
echo "$IMAGE"
