#!/usr/bin/env bash
# Build the image's base without Docker Hub: a Debian bookworm minbase with Python 3.11
# and its venv module, made with debootstrap and loaded with `docker import`.
#
#   docker/base-image.sh [--mirror URL] [--tag NAME] [--cache-dir DIR]
#
# Prints the image name on its last line; pass it to the build as
#   BASE_IMAGE=<name> docker compose -f docker/compose.yml build
#
# Needs root, debootstrap and a Debian mirror (--mirror: a local one on an air-gapped
# network; without it debootstrap's default). The root filesystem is kept as a tarball in
# the cache folder (default ~/.cache/sagin-qfl-docker), and the image name carries a key
# of everything that shapes it, so a second call reuses the image, or imports the
# tarball again if the image was removed, instead of running debootstrap.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
# Bump when the steps below change what the tarball holds.
RECIPE=1
mirror=""
tag=""
cache_dir="${XDG_CACHE_HOME:-$HOME/.cache}/sagin-qfl-docker"

while [ $# -gt 0 ]; do
    case "$1" in
        --mirror) mirror="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --cache-dir) cache_dir="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "base-image.sh: unknown argument '$1'; use --mirror, --tag or --cache-dir" >&2
           exit 2 ;;
    esac
done

key=$(printf '%s|%s|%s|%s|minbase' "$RECIPE" "$SUITE" "$PACKAGES" "$mirror" \
      | sha256sum | cut -c1-12)
tag="${tag:-sagin-qfl-base:$SUITE-$key}"
tarball="$cache_dir/base-$SUITE-$key.tar.gz"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image.sh: $tag is already there" >&2
    echo "$tag"
    exit 0
fi

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null \
        || { echo "base-image.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
    mkdir -p "$cache_dir"
    rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
    cleanup() {
        # debootstrap mounts /proc and /sys inside the target; a failed run can leave them.
        local mount
        for mount in $(awk -v root="$rootfs/" 'index($2, root) == 1 { print $2 }' /proc/mounts \
                       | sort -r); do
            umount -l "$mount" || echo "base-image.sh: could not unmount $mount" >&2
        done
        rm -rf --one-file-system "$rootfs" "$tarball.part"
    }
    trap cleanup EXIT
    echo "base-image.sh: debootstrap $SUITE into $rootfs" >&2
    # shellcheck disable=SC2086  # an empty $mirror must vanish: debootstrap's default
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" $mirror >&2
    # Package caches and lists are of no use in an image that installs nothing with apt.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf - . | gzip -1 > "$tarball.part"
    mv "$tarball.part" "$tarball"
fi

docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$tarball" "$tag" >&2
echo "$tag"
