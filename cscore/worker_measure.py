"""Expected launch measurements of the worker image: what an owner or provider puts in a broker policy.

On SEV-SNP the firmware measures, at launch, the OVMF image, the VMSA of every vCPU (its type and the
guest features) and, for a direct kernel boot, a page of hashes of the kernel, the initrd and the
command line. ``snp_measurement`` computes that 48-byte MEASUREMENT from the built artifacts with the
``sev-snp-measure`` library (checked against its own published test vectors in the tests), so anyone
with the same artifacts predicts the value a real guest will report before anything is deployed.

The worker configuration document is bound at launch, not in the image: its 32-byte digest is the
SNP HOST_DATA (TDX MRCONFIGID: the digest then 16 zero bytes). TDX MRTD/RTMRs are not computed here:
no maintained Python library computes them (the only one on PyPI, ``pytdxmeasure``, was last released
in 2023); use the TDX module vendor's or the cloud's published reference values.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.sev_mode import SevMode
from sevsnpmeasure.vmm_types import VMMType

from wire.errors import FormatError
from wire.worker_config import host_data, load_worker_config, mrconfigid

# Guest features (SEV_FEATURES of the VMSA): bit 0 SNPActive. QEMU <= 9.0 launches with exactly this;
# newer hypervisors may add bits (e.g. 0x21 adds DebugSwap): pass what the launch command uses.
DEFAULT_GUEST_FEATURES = 0x1
VCPU_TYPES = tuple(vcpu_types.CPU_SIGS)
VMM_TYPES = {"qemu": VMMType.QEMU, "ec2": VMMType.ec2, "gce": VMMType.gce}
TDX_NOTE = ("TDX MRTD/RTMRs are not computed: no maintained library computes them; take the reference values "
            "your TDX module vendor or cloud publishes")


class MeasureError(ValueError):
    """An artifact or parameter needed for the measurement is missing or malformed; the message names it."""


@dataclass(frozen=True)
class SnpLaunch:
    """One direct-kernel-boot launch: the measured artifacts and the VM shape.

    ``cmdline`` is the kernel command line exactly as given to QEMU's ``-append`` (no trailing NUL);
    ``vcpu_type`` is a QEMU CPU model name (``EPYC-Milan``, ``EPYC-Genoa``, ...)."""

    ovmf: Path
    kernel: Path | None
    initrd: Path | None
    cmdline: str | None
    vcpus: int
    vcpu_type: str
    guest_features: int = DEFAULT_GUEST_FEATURES
    vmm: str = "qemu"

    def check(self) -> None:
        """MeasureError naming the first missing artifact or bad parameter."""
        for name, path in (("--ovmf", self.ovmf), ("--kernel", self.kernel), ("--initrd", self.initrd)):
            if path is not None and (not Path(path).exists() or Path(path).is_dir()):
                raise MeasureError(f"{name}: expected a file, got {path} (build the image first: infra/image/build.sh)")
        if self.initrd is not None and self.kernel is None:
            raise MeasureError("--initrd: given without --kernel; a direct boot measures both")
        if self.vcpus < 1:
            raise MeasureError(f"--vcpus: expected at least 1, got {self.vcpus}")
        if self.vcpu_type not in vcpu_types.CPU_SIGS:
            raise MeasureError(f"--vcpu-type: expected one of {', '.join(VCPU_TYPES)}, got {self.vcpu_type!r}")
        if self.vmm not in VMM_TYPES:
            raise MeasureError(f"--vmm: expected one of {', '.join(VMM_TYPES)}, got {self.vmm!r}")


def snp_measurement(launch: SnpLaunch) -> bytes:
    """The 48-byte SEV-SNP launch MEASUREMENT of this launch (MeasureError on bad input)."""
    launch.check()
    try:
        return guest.calc_launch_digest(
            SevMode.SEV_SNP, launch.vcpus, vcpu_types.CPU_SIGS[launch.vcpu_type], str(launch.ovmf),
            str(launch.kernel) if launch.kernel else None, str(launch.initrd) if launch.initrd else None,
            launch.cmdline, launch.guest_features, vmm_type=VMM_TYPES[launch.vmm])
    except (RuntimeError, ValueError) as exc:  # e.g. an OVMF build without the SNP kernel-hashes section
        raise MeasureError(f"--ovmf {launch.ovmf}: {exc} (use an OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc)") \
            from exc


# -- the configuration digest (HOST_DATA / MRCONFIGID) ----------------------------------------------------


def config_digest_of_file(path: Path) -> bytes:
    """SHA-256 over the RFC 8785 canonical JSON of the worker configuration document at ``path``
    (``wire.worker_config``: parsed strictly first, so a malformed document is named, not measured)."""
    try:
        config, _ = load_worker_config(path)
    except (OSError, FormatError) as exc:
        raise MeasureError(f"--config {path}: expected a worker configuration document, got: {exc}") from exc
    return config.digest()


def snp_host_data(digest: bytes) -> bytes:
    """SEV-SNP HOST_DATA (32 bytes) for a configuration digest."""
    return host_data(digest)


def tdx_mrconfigid(digest: bytes) -> bytes:
    """TDX MRCONFIGID (48 bytes): the configuration digest, then 16 zero bytes."""
    return mrconfigid(digest)


# -- what to put in a policy ------------------------------------------------------------------------------


@dataclass
class Expected:
    """The expected values for one image and configuration, per vCPU type."""

    snp: dict[str, str]  # vCPU type -> measurement hex
    launch: dict[str, Any]
    host_data: str | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> sha256 hex

    def policy(self) -> dict[str, Any]:
        """An attestation/broker policy (``attestation.Policy`` keys) allowing exactly these launches."""
        out: dict[str, Any] = {"allowed_measurements": sorted(set(self.snp.values())), "allowed_roots": ["amd"],
                               "allow_debug": False}
        if self.host_data is not None:
            out["host_data"] = [self.host_data]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"sev_snp": self.snp, "launch": self.launch, "host_data": self.host_data,
                "tdx_mrconfigid": (self.host_data + "00" * 16) if self.host_data else None,
                "artifacts": self.artifacts, "tdx": TDX_NOTE, "policy": self.policy()}


def expected(ovmf: Path, kernel: Path | None, initrd: Path | None, cmdline: str | None, vcpus: int,
             cpu_types: list[str], guest_features: int = DEFAULT_GUEST_FEATURES, vmm: str = "qemu",
             config: Path | None = None) -> Expected:
    """Measurements for each vCPU type, the configuration's HOST_DATA, and the artifacts' SHA-256."""
    snp = {}
    for cpu in cpu_types:
        launch = SnpLaunch(ovmf, kernel, initrd, cmdline, vcpus, cpu, guest_features, vmm)
        snp[cpu] = snp_measurement(launch).hex()
    artifacts = {name: hashlib.sha256(Path(p).read_bytes()).hexdigest()
                 for name, p in (("ovmf", ovmf), ("kernel", kernel), ("initrd", initrd)) if p is not None}
    host = snp_host_data(config_digest_of_file(config)).hex() if config is not None else None
    return Expected(snp=snp, host_data=host, artifacts=artifacts,
                    launch={"vcpus": vcpus, "guest_features": hex(guest_features), "vmm": vmm, "cmdline": cmdline})


def read_image_manifest(image_dir: Path) -> dict[str, Any]:
    """``image.json`` written by infra/image/build.sh: file names of kernel/initrd/ovmf and the cmdline."""
    path = Path(image_dir) / "image.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MeasureError(f"--image {image_dir}: expected {path} from infra/image/build.sh, got: {exc}") from exc
    for key in ("kernel", "initrd", "ovmf", "cmdline"):
        if key not in manifest:
            raise MeasureError(f"{path}: expected the field {key!r}, got {sorted(manifest)}")
    return dict(manifest)


def render_text(exp: Expected) -> str:
    """Lines for a person: the measurements, HOST_DATA, and the policy to give a broker."""
    lines = ["SEV-SNP launch measurement per vCPU type:"]
    lines += [f"  {cpu:14} {m}" for cpu, m in exp.snp.items()]
    lines.append(f"  launch: {exp.launch['vcpus']} vCPUs, guest features {exp.launch['guest_features']}, "
                 f"vmm {exp.launch['vmm']}")
    if exp.host_data:
        lines += [f"HOST_DATA (SNP)      {exp.host_data}", f"MRCONFIGID (TDX)     {exp.host_data}{'00' * 16}"]
    else:
        lines.append("HOST_DATA: not pinned (give --config FILE, the worker configuration document)")
    lines += [f"TDX: {TDX_NOTE}", "", "policy for the brokers (attestation.Policy / key policy):",
              json.dumps(exp.policy(), indent=2)]
    return "\n".join(lines)
