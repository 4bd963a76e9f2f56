#!/usr/bin/env bash
# Build the Docker image and the Apptainer SIF from a fresh clone with `make image` and `make sif`, run
# both self-tests (a LIBERO eval inside each, read-only), print sizes and build times, and write them to
# OUT/check_images.json. Not part of CI (about an hour). Run as root.
#   scripts/check_images.sh [OUT]        (default /var/tmp/grpo-vla-images)
# Workarounds for machines like our build VM, each off unless set (docs/NOTEBOOK.md, "Containers"):
#   CHECK_PODMAN_RUNC=1            podman with runc, cgroupfs and ulimits under the host's hard limits
#   CHECK_STANDIN_BASE=1           no registry: a debootstrapped Debian bookworm with Python 3.11 stands
#                                  in for python:3.11-slim-bookworm (its Python and headers in /usr)
#   CHECK_APPTAINER_IN_CONTAINER=1 no native Apptainer: Debian sid's apptainer in a privileged trixie
#                                  container converts the image archive and runs the SIF
#   SITE_CA=FILE                   a CA bundle for builds behind a TLS-intercepting proxy (to make)
#   LIBERO_ASSETS=DIR              the assets the self-tests bind (default ../shared/libero/assets)
#   IMAGE_BUILD_FLAGS=...          flags for the image build (default --no-cache: a full build is timed)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(mkdir -p "${1:-/var/tmp/grpo-vla-images}" && cd "${1:-/var/tmp/grpo-vla-images}" && pwd)"
export LIBERO_ASSETS="${LIBERO_ASSETS:-$(cd "$repo/../shared/libero/assets" 2>/dev/null && pwd || true)}"
log() { echo "[check_images $(date -u +%T)] $*"; }
mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

if [ "${CHECK_PODMAN_RUNC:-0}" = 1 ]; then
  cat > "$out/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  export CONTAINERS_CONF="$out/containers.conf"
fi
engine="${ENGINE:-$(docker info >/dev/null 2>&1 && echo docker || echo podman)}"  # as the Makefile picks

debian_image() {  # NAME SUITE: a minbase Debian image from debootstrap (no registry needed)
  if ! $engine image inspect "$1" >/dev/null 2>&1; then
    log "debootstrap $2 -> $1"
    rm -rf "$out/rootfs-$2"
    debootstrap --variant=minbase "$2" "$out/rootfs-$2" "$mirror" >"$out/debootstrap-$2.log"
    tar -C "$out/rootfs-$2" -c . | $engine import --change 'CMD ["bash"]' - "$1" >/dev/null
    rm -rf "$out/rootfs-$2"
  fi
}

if [ "${CHECK_STANDIN_BASE:-0}" = 1 ] && ! $engine image inspect docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
  debian_image localhost/debian:bookworm-slim bookworm
  log "stand-in python:3.11-slim-bookworm"
  $engine build --pull=never -t docker.io/library/python:3.11-slim-bookworm -f - "$out" >"$out/standin.log" <<'EOF'
FROM localhost/debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3.11 python3.11-venv python3.11-dev python3-pip ca-certificates && rm -rf /var/lib/apt/lists/*
EOF
fi

if [ "${CHECK_APPTAINER_IN_CONTAINER:-0}" = 1 ]; then
  if ! $engine image inspect localhost/apptainer-runner >/dev/null 2>&1; then
    debian_image localhost/debian:trixie trixie
    log "apptainer runner (trixie + sid's apptainer)"
    $engine build --pull=never -t localhost/apptainer-runner -f - "$out" >"$out/runner.log" 2>&1 <<EOF
FROM localhost/debian:trixie
RUN echo "deb $mirror sid main" > /etc/apt/sources.list.d/sid.list \
 && apt-get -o Acquire::Check-Valid-Until=false update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends apptainer squashfs-tools \
 && rm -rf /var/lib/apt/lists/* \
 && echo "root:100000:65536" >> /etc/subuid && echo "root:100000:65536" >> /etc/subgid \
 && sed -i 's/^root default capabilities = .*/root default capabilities = no/' /etc/apptainer/apptainer.conf
EOF
  fi
  cat > "$out/apptainer" <<EOF
#!/usr/bin/env bash
# Apptainer inside a privileged container, with this check's folders at their own paths. Root there may
# not raise the capabilities %test asks for at the end of a build, so builds skip it (--notest); the
# same test then runs through make sif-test, with CAP_SYS_RESOURCE dropped.
case "\$1" in
  build) set -- build --notest "\${@:2}" ;;
  test) set -- test --drop-caps CAP_SYS_RESOURCE "\${@:2}" ;;
esac
exec $engine run --rm --privileged -e APPTAINER_TMPDIR=$out/tmp -v "$out:$out" -w "\$PWD" \
    ${LIBERO_ASSETS:+-v "$LIBERO_ASSETS:$LIBERO_ASSETS:ro"} localhost/apptainer-runner apptainer "\$@"
EOF
  chmod +x "$out/apptainer"
  mkdir -p "$out/tmp"
  export APPTAINER="$out/apptainer" SIF_FROM=image
fi

log "fresh clone of $(git -C "$repo" rev-parse --short HEAD)"
rm -rf "$out/src" && git clone -q "$repo" "$out/src"
commit="$(git -C "$out/src" rev-parse HEAD)"
make_args=(-C "$out/src" ENGINE="$engine" IMAGE_BUILD_FLAGS="${IMAGE_BUILD_FLAGS---no-cache}" ${SITE_CA:+SITE_CA="$SITE_CA"} LIBERO_ASSETS="$LIBERO_ASSETS")

timed() {  # NAME CMD...: run, keep the log, remember the seconds
  local name="$1"; shift
  local start; start=$(date +%s)
  log "$name: $*"
  if ! "$@" >"$out/$name.log" 2>&1; then tail -30 "$out/$name.log"; log "$name FAILED (log: $out/$name.log)"; exit 1; fi
  eval "${name//-/_}_s=$(( $(date +%s) - start ))"
}
$engine rmi -f grpo-vla:latest >/dev/null 2>&1 || true  # a full build: the previous image's disk back first
timed image make "${make_args[@]}" image
timed image-test make "${make_args[@]}" image-test
timed sif make "${make_args[@]}" sif
timed sif-test make "${make_args[@]}" sif-test

image_bytes="$($engine image inspect --format '{{.Size}}' grpo-vla:latest)"
sif_bytes="$(stat -c %s "$out/src/grpo-vla.sif")"
venv_du="$($engine run --rm --entrypoint du grpo-vla:latest -sm /opt/venv/lib/python3.11/site-packages)"
top="$($engine run --rm --entrypoint bash grpo-vla:latest -c \
  'cd /opt/venv/lib/python3.11/site-packages && du -sm * | sort -rn | head -8 | tr "\t" " " | paste -sd ";" -')"
python3 - "$out/check_images.json" <<EOF
import json, sys
result = {
    "what": "make image and make sif from a fresh clone; both self-tests (LIBERO eval inside, read-only)",
    "commit": "$commit", "date": "$(date -u +%F)", "command": "scripts/check_images.sh",
    "settings": {k: v for k, v in {"CHECK_PODMAN_RUNC": "${CHECK_PODMAN_RUNC:-0}", "CHECK_STANDIN_BASE":
                 "${CHECK_STANDIN_BASE:-0}", "CHECK_APPTAINER_IN_CONTAINER": "${CHECK_APPTAINER_IN_CONTAINER:-0}",
                 "SITE_CA": "${SITE_CA:-}"}.items()},
    "engine": "$engine", "machine": "$(hostname) ($(nproc) CPUs)",
    "seconds": {"image": $image_s, "image_test": $image_test_s, "sif": $sif_s, "sif_test": $sif_test_s},
    "image_mib": round($image_bytes / 2**20), "sif_mib": round($sif_bytes / 2**20),
    "site_packages_mib": int("$venv_du".split()[0]),
    "largest_packages_mib": "$top",
    "image_selftest": open("$out/image-test.log").read()[-4000:],
    "sif_selftest": open("$out/sif-test.log").read()[-4000:],
}
json.dump(result, open(sys.argv[1], "w"), indent=1)
EOF
log "image $(( image_bytes / 1048576 )) MiB in ${image_s} s, SIF $(( sif_bytes / 1048576 )) MiB in ${sif_s} s; self-tests ${image_test_s} s and ${sif_test_s} s"
log "largest packages (MiB): $top"
log "wrote $out/check_images.json"
