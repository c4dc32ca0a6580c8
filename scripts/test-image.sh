#!/usr/bin/env bash
# make test-image (and so make test and CI): build the project's Dockerfile with podman and run
# tests/container against the image, the way a careful cluster runs it.
#   - installs podman, runc and debootstrap if missing (Debian packages, as the setup installs Java);
#   - makes a local Debian base image with debootstrap, so no registry is needed, with this
#     machine's extra CA certificates (a TLS-intercepting proxy's) and pip pointed at them;
#   - builds with --build-arg BASE_IMAGE=<that base>, and, when this machine's pip has a local
#     wheelhouse (find-links) holding the CPU torch wheel, mounts it: PIP_FIND_LINKS=/wheels.
# The Dockerfile itself keeps the public base image and torch index for everyone else.
# Figures (build seconds, image size) go to .transerve/image/figures.json.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=.transerve/image
IMAGE=localhost/transerve:test
BASE=localhost/transerve-base:bookworm
mkdir -p "$WORK"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

missing=""
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ]; then
    echo "test-image: installing$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null
fi

# runc, not crun (crun refuses this kernel's hybrid cgroups), and ulimits a process may set here.
cat > "$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$PWD/$WORK/containers.conf"
PODMAN="$SUDO podman"

if ! $PODMAN image exists "$BASE"; then
    mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    echo "test-image: a Debian bookworm base image from $mirror (debootstrap, once)"
    rootfs="$WORK/rootfs"
    $SUDO rm -rf "$rootfs"
    $SUDO debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        $SUDO cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        $SUDO chroot "$rootfs" update-ca-certificates >/dev/null
    fi
    ca=/etc/ssl/certs/ca-certificates.crt
    $SUDO tar -C "$rootfs" -c . | $PODMAN import --change "ENV PIP_CERT=$ca" --change "ENV REQUESTS_CA_BUNDLE=$ca" \
        --change "ENV SSL_CERT_FILE=$ca" - "$BASE" >/dev/null
    $SUDO rm -rf "$rootfs"
fi

build=(--format docker -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE")
wheels=$(.venv/bin/python -m pip config get global.find-links 2>/dev/null | awk '{print $1}' || true)
if [ -n "$wheels" ] && compgen -G "$wheels/torch-*+cpu-*.whl" >/dev/null; then
    build+=(-v "$wheels:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels)
    echo "test-image: the CPU torch wheel from $wheels"
fi
echo "test-image: podman build (log: $WORK/build.log)"
started=$SECONDS
if ! $PODMAN build "${build[@]}" . >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log"
    echo "test-image: the build failed; the whole log is $WORK/build.log" >&2
    exit 1
fi
seconds=$((SECONDS - started))
size=$($PODMAN image inspect --format '{{.Size}}' "$IMAGE")
printf '{"build_seconds": %s, "image_bytes": %s}\n' "$seconds" "$size" | tee "$WORK/figures.json"

TRANSERVE_IMAGE="$IMAGE" PODMAN="$PODMAN" .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/container
