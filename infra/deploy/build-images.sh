#!/bin/sh
# Build both images of infra/deploy/Dockerfile where there is no Docker daemon and no container registry, then run
# them: buildah (Debian's `apt-get install buildah debootstrap`), as root, chroot isolation, host network.
#
#   infra/deploy/build-images.sh [WORKDIR]      # WORKDIR (default /tmp/cscore-images): the base's rootfs and logs
#
# The Dockerfile's two bases are build arguments; here they are made locally instead of pulled:
#   - PYTHON_IMAGE: a minimal Debian bookworm (debootstrap --variant=minbase) with Debian's python3.11 and
#     ca-certificates, in place of python:3.11-slim-bookworm (same Debian release; Python 3.11.2 from Debian
#     instead of python.org's latest 3.11 under /usr/local);
#   - UV_IMAGE: the uv binary of PyPI's `uv` wheel at the version the Makefile pins, alone at /uv as in
#     ghcr.io/astral-sh/uv.
# `uv sync --frozen` inside the build fetches the locked wheels from PyPI (the build needs the network).
# EXTRA_CA=FILE adds a CA to the local base and makes uv use the system's CAs (a TLS-intercepting egress proxy);
# the official images need neither.
#
# Checks on the built images: `python -m keybroker --help` and `airflow version` run as the image's user; the
# installed distributions are exactly uv.lock's (`"$uv" export --frozen --no-dev`, markers evaluated by the image's
# Python); the image holds nothing of infra/deploy (make-secrets.sh's secrets/ and compose's .env are there).
# Then the owner's broker serves /readyz over TLS with make-secrets.sh's files mounted as compose mounts them.
set -eu
cd "$(dirname "$0")/../.."
work=${1:-/tmp/cscore-images}
tag=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
uv_version=$(sed -n 's/.*uv==\([0-9.]*\).*/\1/p' Makefile | head -n 1)
base=localhost/cscore-base-python:3.11-bookworm
uv_image=localhost/cscore-uv:$uv_version
mkdir -p "$work"
uv=${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}
now() { date +%s; }

if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  start=$(now)
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase --include=python3.11,ca-certificates bookworm "$work/rootfs" \
    > "$work/debootstrap.log"   # debootstrap's default mirror
  if [ -n "${EXTRA_CA:-}" ]; then
    cp "$EXTRA_CA" "$work/rootfs/usr/local/share/ca-certificates/extra-ca.crt"
    chroot "$work/rootfs" update-ca-certificates > /dev/null 2>&1
  fi
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$work/rootfs.tar" / > /dev/null   # a local tar is unpacked
  buildah config --env LANG=C.UTF-8 --cmd python3.11 "$ctr"
  [ -z "${EXTRA_CA:-}" ] || buildah config --env UV_NATIVE_TLS=1 "$ctr"
  buildah commit --rm -q "$ctr" "$base" > /dev/null
  rm -rf "$work/rootfs" "$work/rootfs.tar"
  echo "base $base: $(($(now) - start)) s"
fi

if ! buildah inspect --type image "$uv_image" >/dev/null 2>&1; then
  rm -rf "$work/uv" && mkdir -p "$work/uv"
  python3 -m pip download -q --no-deps --only-binary :all: --platform manylinux_2_17_x86_64 \
    -d "$work/uv" "uv==$uv_version"
  python3 -m zipfile -e "$work/uv"/uv-*.whl "$work/uv/wheel"
  install -m 0755 "$work/uv/wheel/uv-$uv_version.data/scripts/uv" "$work/uv/uv"
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$work/uv/uv" /uv > /dev/null
  buildah commit --rm -q "$ctr" "$uv_image" > /dev/null
  rm -rf "$work/uv"
  echo "uv image $uv_image"
fi

for target in broker platform; do
  start=$(now)
  buildah build --isolation chroot --network host --layers --pull=never -f infra/deploy/Dockerfile \
    --build-arg PYTHON_IMAGE="$base" --build-arg UV_IMAGE="$uv_image" --target "$target" \
    -t "localhost/cscore-$target:$tag" . > "$work/build-$target.log" 2>&1 \
    || { tail -n 30 "$work/build-$target.log"; exit 1; }
  echo "built localhost/cscore-$target:$tag: $(($(now) - start)) s"
done
# buildah 1.28 leaves the working container of a stage that is only a FROM (the uv one) after each build.
buildah containers --quiet --filter "ancestor=$uv_image" | xargs -r buildah rm > /dev/null

"$uv" export --frozen --no-dev --no-hashes --no-header --no-annotate --no-emit-project > "$work/locked.txt"
check=$(cat <<'EOF'
import importlib.metadata as md, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as canon
want = {}
for line in open(sys.argv[1]):
    if line.strip():
        req = Requirement(line.strip())
        if req.marker is None or req.marker.evaluate():
            want[canon(req.name)] = str(req.specifier).removeprefix("==")
want["cscore"] = sys.argv[2]
have = {canon(d.metadata["Name"]): d.version for d in md.distributions()}
assert have == want, {"missing or other version": {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v},
                      "not locked": sorted(set(have) - set(want))}
print(f"{len(have)} distributions, each the version uv.lock pins")
EOF
)
for target in broker platform; do
  image=localhost/cscore-$target:$tag
  ctr=$(buildah from --pull=never "$image")
  buildah copy "$ctr" "$work/locked.txt" /tmp/locked.txt > /dev/null
  run() { buildah run --isolation chroot "$ctr" -- "$@"; }
  echo "== $image: $(buildah images --format '{{.Size}}' "$image"), user $(run id -u)"
  run python -m keybroker --help | head -n 3
  [ "$target" = broker ] || run airflow version
  run python -c "$check" /tmp/locked.txt "$tag"
  run test -d /opt/cscore/infra/local -a ! -e /opt/cscore/infra/deploy \
    || { echo "infra/deploy (secrets, .env) in the image"; exit 1; }
  buildah rm "$ctr" > /dev/null
done

# The owner's broker served as compose.yaml runs it: make-secrets.sh's files bind-mounted with their owner and mode
# (compose's file secrets), its config (on port BROKER_CHECK_PORT, host network), the image's own key-store directory
# (a new named volume starts as a copy of it); /readyz answers over TLS checked against its certificate.
port=${BROKER_CHECK_PORT:-18443}
rm -rf "$work/secrets" && sh infra/deploy/make-secrets.sh "$work/secrets"
mounts=$(.venv/bin/python - "$work" "$port" <<'EOF'
import json, sys, yaml
work, port = sys.argv[1:]
compose = yaml.safe_load(open("infra/deploy/compose.yaml"))
service = compose["services"]["owner-broker"]
for name in service["secrets"]:
    print(f"-v {compose['secrets'][name]['file'].replace('./secrets', work + '/secrets', 1)}:/run/secrets/{name}:ro")
source, target = next(v for v in service["volumes"] if v.startswith("./brokers/")).split(":")[:2]
config = json.load(open("infra/deploy/" + source.removeprefix("./")))
json.dump({**config, "port": int(port)}, open(f"{work}/owner.json", "w"))
print(f"-v {work}/owner.json:{target}:ro")
EOF
)
ctr=$(buildah from --pull=never "localhost/cscore-broker:$tag")
# shellcheck disable=SC2086  # one mount per word
buildah run --isolation chroot $mounts "$ctr" -- python -m keybroker serve --config /etc/cscore/broker.json \
  > "$work/broker-serve.log" 2>&1 &
serving=$!
ready=
for _ in $(seq 1 90); do
  curl -sf --cacert "$work/secrets/owner/tls.pem" --resolve "owner-broker:$port:127.0.0.1" \
    "https://owner-broker:$port/readyz" && { ready=1; break; }
  sleep 1
done
kill "$serving"; wait "$serving" || true
buildah rm "$ctr" > /dev/null
[ -n "$ready" ] || { echo "the broker did not serve:"; tail -n 5 "$work/broker-serve.log"; exit 1; }
echo
