"""Intel SGX Root CA (public certificate), the root of both the PCK chains in TDX quotes and the
TCB Signing chain of Intel PCS collateral. Pinned by the SHA-256 of its DER encoding."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from attestation.errors import ParseError, VerificationError

INTEL_ROOT_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

INTEL_ROOT_PEM = """\
-----BEGIN CERTIFICATE-----
MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw
aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv
cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ
BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG
A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0
aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT
AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7
1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB
uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ
MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50
ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV
Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI
KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg
AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=
-----END CERTIFICATE-----
"""


def pinned_intel_root() -> x509.Certificate:
    """The Intel SGX Root CA above, checked against its pinned fingerprint."""
    cert = x509.load_pem_x509_certificate(INTEL_ROOT_PEM.encode())
    actual = cert.fingerprint(hashes.SHA256()).hex()
    if actual != INTEL_ROOT_SHA256:
        raise VerificationError("anchors.intel_root", f"SHA-256 fingerprint {INTEL_ROOT_SHA256}", actual,
                                "the packaged Intel certificate was modified; reinstall cscore")
    return cert


def verify_intel_chain(certs: list[x509.Certificate], at: datetime, roots: tuple[x509.Certificate, ...],
                       where: str, names: tuple[str, ...]) -> x509.Certificate:
    """Check ``certs`` (leaf first, root last; one name each, for messages) link up by signatures,
    are each valid at ``at``, and end in one of ``roots``. Returns the leaf. VerificationError names
    ``where.<name>``; ParseError when the count is not ``len(names)``."""
    if len(certs) != len(names):
        raise ParseError(where, f"{len(names)} certificates ({', '.join(names)})", len(certs))
    if certs[-1] not in roots:
        raise VerificationError(f"{where}.root", f"Intel SGX Root CA (sha256 {INTEL_ROOT_SHA256})",
                                certs[-1].fingerprint(hashes.SHA256()).hex(), "the chain ends in an untrusted root")
    for i, (cert, name) in enumerate(zip(certs, names, strict=True)):
        issuer = certs[min(i + 1, len(certs) - 1)]
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(f"{where}.{name}", f"issued by {issuer.subject.rfc4514_string()}",
                                    cert.issuer.rfc4514_string(), "the chain does not verify") from exc
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if not start <= at <= end:
            raise VerificationError(f"{where}.{name}.validity", f"{start.isoformat()} .. {end.isoformat()}",
                                    at.isoformat(), "the certificate is expired or not yet valid at that time")
    return certs[0]
