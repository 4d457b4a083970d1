"""A SIMULATED AMD key hierarchy for development and CI: ARK (RSA, self-signed) -> ASK (RSA) ->
VCEK (EC P-384), shaped like AMD's (RSA-PSS SHA-384 signatures, TCB and hwID extensions), with
every name marked "SIMULATED ... NOT AMD". Evidence signed with it goes through exactly the same
verifier as real evidence; only the root differs, and ``TrustAnchors.from_dir`` marks it
"simulated" so a production policy (``allowed_roots=["amd"]``) refuses it.

Files written by :func:`create_simulated_firmware` (the ``CSCORE_SIM_TEE_DIR`` layout):
``vcek.key`` (PEM, P-384, mode 0600), ``vcek.der``, ``ask_ark.pem`` (ASK then ARK), ``ark.pem``.

Command line: ``python -m attestation.simulated init DIR``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from attestation.snp.report import TcbVersion
from attestation.snp.verify import OID_HWID, OID_PRODUCT_NAME, TCB_OIDS

FILES = ("vcek.key", "vcek.der", "ask_ark.pem", "ark.pem")
PRODUCT = "Milan"
# RSA 3072 rather than AMD's 4096: key generation stays well under a second on a small CI box,
# and the verifier's rules (RSA-PSS, SHA-384, >= 2048 bits) are the same.
RSA_BITS = 3072
SIM_TCB = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)
SIM_CHIP_ID = hashlib.sha512(b"cscore SIMULATED SEV-SNP chip - NOT AMD").digest()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SIMULATED - NOT Advanced Micro Devices"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "cscore development TEE - NOT AMD"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"SIMULATED {common_name} NOT AMD"),
    ])


def _der_int(value: int) -> bytes:
    """DER INTEGER for 0..255, the way AMD encodes SPL extensions."""
    body = value.to_bytes(2 if value > 127 else 1, "big")
    return bytes([0x02, len(body)]) + body


def _amd_ext(oid: str, value: bytes) -> x509.Extension[x509.UnrecognizedExtension]:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
    return x509.Extension(ext.oid, False, ext)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object, serial: int,
             years: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(serial)  # type: ignore[arg-type]
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365 * years)))


@dataclass(frozen=True)
class SimulatedHierarchy:
    """Every key and certificate of one simulated AMD hierarchy (ARK -> ASK or ASVK -> VCEK or VLEK).

    Two hierarchies generated alike carry identical subject names and differ only in their keys:
    what a forger with its own "AMD" would hold (tests build forgeries from it).
    """

    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate  # the ASVK (SEV-VLEK-<product>) for a VLEK hierarchy
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate  # the VCEK, or the VLEK (no hwID extension)


def generate_hierarchy(product: str = PRODUCT, tcb: TcbVersion = SIM_TCB, chip_id: bytes = SIM_CHIP_ID, *,
                       vlek: bool = False) -> SimulatedHierarchy:
    """Generate a hierarchy with AMD-shaped names and extensions for ``product``.

    ``vlek``: the intermediate is an ASVK (CN ``SEV-VLEK-<product>``) and the leaf a VLEK (CN
    ``SEV-VLEK``, no hwID: a VLEK is not tied to one chip).
    """
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    kind = "VLEK-" if vlek else ""
    ark_name, ask_name = _name(f"ARK-{product}"), _name(f"SEV-{kind}{product}")
    ca = x509.BasicConstraints(ca=True, path_length=None)
    ark = (_builder(ark_name, ark_name, ark_key.public_key(), 1, 25).add_extension(ca, critical=True)
           .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS))
    ask = (_builder(ask_name, ark_name, ask_key.public_key(), 2, 25).add_extension(ca, critical=True)
           .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS))
    leaf_builder = _builder(_name("SEV-VLEK" if vlek else "SEV-VCEK"), ask_name, leaf_key.public_key(), 3, 7)
    for ext in _vcek_extensions(product, tcb, None if vlek else chip_id):
        leaf_builder = leaf_builder.add_extension(ext.value, critical=False)
    leaf = leaf_builder.sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
    return SimulatedHierarchy(ark_key, ark, ask_key, ask, leaf_key, leaf)


def generate_chain(product: str = PRODUCT, tcb: TcbVersion = SIM_TCB,
                   chip_id: bytes = SIM_CHIP_ID) -> tuple[ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    """Generate (vcek_key, [vcek, ask, ark]) with AMD-shaped extensions for ``product``."""
    h = generate_hierarchy(product, tcb, chip_id)
    return h.leaf_key, [h.leaf, h.ask, h.ark]


def _vcek_extensions(product: str, tcb: TcbVersion,
                     chip_id: bytes | None) -> list[x509.Extension[x509.UnrecognizedExtension]]:
    name = f"{product}-B0".encode()
    exts = [_amd_ext(OID_PRODUCT_NAME, bytes([0x16, len(name)]) + name)]
    exts += [_amd_ext(TCB_OIDS[k], _der_int(v)) for k, v in tcb.as_dict().items()]
    if chip_id is not None:
        exts.append(_amd_ext(OID_HWID, chip_id[:8] if product == "Turin" else chip_id))  # Turin hwIDs: 8 bytes
    return exts


def create_simulated_firmware(directory: Path) -> None:
    """Create the simulated firmware files in ``directory`` unless they all exist (idempotent).

    Safe to call from several processes at once (a lock file serialises them). Raises
    FileExistsError if only some of the files exist: remove the folder and call again.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent workers must not mix two hierarchies
        present = [f for f in FILES if (directory / f).exists()]
        if len(present) == len(FILES):
            return
        if present:
            raise FileExistsError(f"{directory} holds only {present} of {list(FILES)}; remove them and retry")
        _write_all(directory, *generate_chain())


def _write_all(directory: Path, key: ec.EllipticCurvePrivateKey, chain: list[x509.Certificate]) -> None:
    vcek, ask, ark = chain
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _atomic_write(directory / "vcek.der", vcek.public_bytes(serialization.Encoding.DER))
    _atomic_write(directory / "ask_ark.pem", ask.public_bytes(pem) + ark.public_bytes(pem))
    _atomic_write(directory / "ark.pem", ark.public_bytes(pem))
    _atomic_write(directory / "vcek.key", key_pem, mode=0o600)  # last: its presence means "complete"


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a stale one (a crashed write) would keep its own mode: a world-readable key
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m attestation.simulated init DIR``: create the simulated firmware files."""
    parser = argparse.ArgumentParser(prog="python -m attestation.simulated",
                                     description="Simulated SEV-SNP firmware keys (NOT AMD; development only)")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create vcek.key, vcek.der, ask_ark.pem, ark.pem in DIR")
    init.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    create_simulated_firmware(args.dir)
    print(f"simulated SEV-SNP firmware (NOT AMD) ready in {args.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
