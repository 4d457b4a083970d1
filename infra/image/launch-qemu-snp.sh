#!/usr/bin/env bash
# Launch the worker image as an SEV-SNP guest with QEMU/KVM on an SNP host (QEMU >= 9.1, host kernel
# with SNP support, an OVMF built from edk2's OvmfPkg/AmdSev/AmdSevX64.dsc: see README.md).
#
#   infra/image/launch-qemu-snp.sh IMAGE_DIR OVMF CONFIG.json [VCPUS] [CPU_MODEL]
#
# The kernel, initrd and command line are measured by the firmware (kernel-hashes=on); the worker
# configuration document travels unmeasured over fw_cfg and is bound by its digest in HOST_DATA.
# Before launching, it prints the measurement the guest will report (cscore worker measure), to compare
# with the signed release and the brokers' policies.
set -euo pipefail

image=${1:?usage: launch-qemu-snp.sh IMAGE_DIR OVMF CONFIG.json [VCPUS] [CPU_MODEL]}
ovmf=${2:?OVMF (AmdSevX64 build) missing}
config=${3:?worker configuration document missing}
vcpus=${4:-2}
cpu=${5:-EPYC-Milan}
memory=${MEMORY:-4G}
cscore=${CSCORE:-cscore}

cmdline=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$image/image.json")
expected=$("$cscore" worker measure --image "$image" --ovmf "$ovmf" --vcpus "$vcpus" --vcpu-type "$cpu" \
    --config "$config" --json)
measurement=$(printf '%s' "$expected" | python3 -c 'import json, sys; d = json.load(sys.stdin); print(next(iter(d["sev_snp"].values())))')
host_data=$(printf '%s' "$expected" | python3 -c 'import base64, json, sys; print(base64.b64encode(bytes.fromhex(json.load(sys.stdin)["host_data"])).decode())')
echo "expected MEASUREMENT $measurement"
echo "HOST_DATA (base64)   $host_data"

exec qemu-system-x86_64 \
    -enable-kvm -nographic -no-reboot \
    -machine q35,confidential-guest-support=sev0,memory-backend=ram0 \
    -cpu "$cpu" -smp "$vcpus" -m "$memory" \
    -object "memory-backend-memfd,id=ram0,size=$memory,share=true,prealloc=false" \
    -object "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,host-data=$host_data" \
    -bios "$ovmf" -kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "$cmdline" \
    -fw_cfg "name=opt/cscore/worker-config.json,file=$config" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0
