#!/usr/bin/env bash
# Build the worker image twice from this checkout and compare the artifacts byte for byte.
# Not part of the test suite: needs root, mmdebstrap, the Debian mirror and minutes.
#
#   sudo bench/image_repro.sh [WORK_DIR]
#
# Prints, per build, the wall time and the artifacts' SHA-256; then sizes, package counts and the
# verdict. On a difference it lists the files of the two initrds whose content differs.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/cscore-image-repro}
rm -rf "$work"
mkdir -p "$work"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}

for build in a b; do
    start=$(date +%s)
    "$repo/infra/image/build.sh" "$work/$build" > "$work/$build.log" 2>&1
    echo "build $build: $(( $(date +%s) - start )) s"
    (cd "$work/$build" && sha256sum vmlinuz initrd.img image.json packages.tsv)
done

echo "initrd: $(du -h "$work/a/initrd.img" | cut -f1) compressed, $(zstd -dc "$work/a/initrd.img" | wc -c) bytes unpacked"
echo "kernel: $(du -h "$work/a/vmlinuz" | cut -f1)"
echo "Debian packages: $(wc -l < "$work/a/packages.tsv"); Python distributions: $(grep -c '==' <("$repo/.venv/bin/python" -m infra.image.closure requirements))"
if cmp -s "$work/a/initrd.img" "$work/b/initrd.img" && cmp -s "$work/a/vmlinuz" "$work/b/vmlinuz" \
        && cmp -s "$work/a/image.json" "$work/b/image.json"; then
    echo "REPRODUCIBLE: both builds are byte-identical"
    exit 0
fi
echo "NOT REPRODUCIBLE: files whose content differs:"
for build in a b; do
    mkdir -p "$work/$build.root"
    (cd "$work/$build.root" && zstd -dc "../$build/initrd.img" | cpio -idm --quiet)
    (cd "$work/$build.root" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$work/$build.sums"
done
diff "$work/a.sums" "$work/b.sums" | head -50 || true
exit 1
