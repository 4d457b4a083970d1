#!/usr/bin/env bash
# Build the confidential worker image for a direct kernel boot: vmlinuz + initrd.img (the whole root
# filesystem, in RAM) + image.json (file names, digests, the kernel command line).
#
#   infra/image/build.sh OUT_DIR        (root; needs mmdebstrap, cpio, zstd, python3-pip; see README.md)
#
# Debian bookworm from mmdebstrap (variant "essential": no apt, no shell beyond busybox) with the
# backports kernel (6.12: configfs-tsm for SEV-SNP/TDX reports), Debian's python3 (3.11, as the lock),
# the locked wheels of the worker's closure only (verified by hash), and enclave/ tasks/ attestation/
# wire/ as source. Timestamps come from SOURCE_DATE_EPOCH (default: the last commit's time), file order
# is sorted, compression single-threaded: two builds of one commit from one mirror state give the same
# bytes (bench/image_repro.sh checks it). The worker configuration is NOT in the image: it is passed at
# launch and bound by its digest in HOST_DATA / MRCONFIGID.
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}
export SOURCE_DATE_EPOCH LC_ALL=C TZ=UTC
cmdline=${CMDLINE:-console=ttyS0 panic=-1 quiet}

for tool in mmdebstrap cpio zstd; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing: apt-get install mmdebstrap cpio zstd" >&2; exit 2; }
done
mkdir -p "$out"
work=$(mktemp -d /tmp/cscore-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# 1. The locked wheels of the worker's closure, each checked against uv.lock's hash, installed offline.
"$python" -m infra.image.closure requirements > "$work/requirements.txt"
python3 -m pip download --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: \
    -r "$work/requirements.txt" -d "$work/wheels"
python3 -m pip install --quiet --disable-pip-version-check --no-index --find-links "$work/wheels" \
    --require-hashes --no-deps --no-compile --target "$work/site" -r "$work/requirements.txt"
rm -rf "$work/site/bin"  # console scripts: the worker runs `python3 -m celery`
for folder in $("$python" -m infra.image.closure trusted); do
    if [ -d "$repo/$folder" ]; then
        (cd "$repo" && find "$folder" -name '*.py' -not -path '*/__pycache__/*' -print0 \
            | cpio --null --pass-through --make-directories --quiet "$work/site")
    fi
done

# 2. The root filesystem: Debian packages, then the closure, the init script, and nothing else.
# shellcheck disable=SC2016  # "$1" in a hook is the root folder, expanded by mmdebstrap's shell, not here
mmdebstrap --quiet --variant=essential \
    --include=python3,libstdc++6,ca-certificates,busybox,kmod,linux-image-cloud-amd64/bookworm-backports \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="mkdir -p \"\$1/usr/local/lib/python3.11/dist-packages\"" \
    --customize-hook="sync-in $work/site /usr/local/lib/python3.11/dist-packages" \
    --customize-hook="upload $repo/infra/image/init /init" \
    --customize-hook="upload $repo/infra/image/udhcpc.script /etc/udhcpc.script" \
    --customize-hook='chmod 0755 "$1/init" "$1/etc/udhcpc.script"' \
    --customize-hook='chroot "$1" dpkg-query -W -f="\${Package}\t\${Version}\n" > "$1/usr/share/cscore-packages.tsv"' \
    "$suite" "$work/rootfs" \
    "deb $mirror $suite main" "deb $mirror $suite-backports main"

# 3. The kernel out, then what differs between two builds or is not needed at run time.
root=$work/rootfs
cp "$(find "$root/boot" -name 'vmlinuz-*' | sort | tail -n 1)" "$out/vmlinuz"
rm -rf "${root:?}/boot" "$root"/var/cache/* "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/var/lib/dpkg/*-old "$root/etc/machine-id" "$root/etc/hostname"
find "$root" -name '__pycache__' -type d -prune -exec rm -rf {} +  # written at run time, in RAM
: > "$root/etc/machine-id"
cp "$root/usr/share/cscore-packages.tsv" "$out/packages.tsv"

# 4. The initrd: every path sorted, every timestamp SOURCE_DATE_EPOCH, owners root, one compressor thread.
find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
(cd "$root" && find . -mindepth 1 -print0 | sort -z \
    | cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) \
    | zstd --quiet -T1 -12 > "$out/initrd.img"

# 5. What the launch and the measurement need: file names, digests, the command line.
"$python" - "$out" "$cmdline" "$suite" <<'PY'
import hashlib, json, os, sys
out, cmdline, suite = sys.argv[1:4]
digest = {f: hashlib.sha256(open(os.path.join(out, f), "rb").read()).hexdigest() for f in ("vmlinuz", "initrd.img")}
manifest = {"kernel": "vmlinuz", "initrd": "initrd.img", "ovmf": os.environ.get("OVMF_NAME", "OVMF.amdsev.fd"),
            "cmdline": cmdline, "suite": suite, "source_date_epoch": int(os.environ["SOURCE_DATE_EPOCH"]),
            "sha256": digest}
with open(os.path.join(out, "image.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
PY
echo "built $out: $(du -h "$out/initrd.img" | cut -f1) initrd, $(wc -l < "$out/packages.tsv") Debian packages"
