"""TDX evidence to claims: verify the quote (and collateral, when given) and name what it says.

Returns the keyword arguments of :class:`attestation.Claims` (built by
:func:`attestation.verify_evidence`, which keeps this module free of an import cycle).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from attestation.anchors import load_pem_certs
from attestation.tdx.collateral import TcbResult, TdxCollateral, tcb_status, verify_collateral
from attestation.tdx.intel_root import pinned_intel_root
from attestation.tdx.pck import pck_extensions
from attestation.tdx.quote import TdxQuote, verify_quote_and_pck

if TYPE_CHECKING:
    from attestation.anchors import TrustAnchors


def verify_tdx(quote_bytes: bytes, collateral: TdxCollateral | None, anchors: TrustAnchors,
               at: datetime) -> dict[str, Any]:
    """Verify a TDX quote at ``at`` (and its TCB status from ``collateral``); return claim values.

    Trusts the pinned Intel SGX Root CA plus ``anchors.intel_roots`` (marked "simulated").
    Raises ParseError or VerificationError naming the field. A naive ``at`` is UTC (both checks read it so).
    """
    pinned = pinned_intel_root()
    roots = (pinned, *anchors.intel_roots)
    quote, pck = verify_quote_and_pck(quote_bytes, at, roots)
    ext = pck_extensions(pck)
    used: list[x509.Certificate] = [load_pem_certs(quote.pck_chain_pem, "quote.pck_chain")[-1]]
    result: TcbResult | None = None
    if collateral is not None:
        verified = verify_collateral(collateral, at, roots)
        result = tcb_status(quote, ext, verified)
        used += verified.roots
    return {
        **_quote_claims(quote),
        "tcb": {"tdx_module": quote.tee_tcb_svn[0], "tdx_module_version": quote.tee_tcb_svn[1],
                "tdx_microcode": quote.tee_tcb_svn[2], "pce": ext.pce_svn},
        "chip_id": ext.ppid.hex(), "fmspc": ext.fmspc.hex(), "platform_instance_id": ext.platform_instance_id.hex(),
        "signing_key": "pck", "root": "intel" if all(root == pinned for root in used) else "simulated",
        "tcb_status": result.status if result else "",
        "advisory_ids": list(result.advisory_ids) if result else [],
    }


def _quote_claims(quote: TdxQuote) -> dict[str, Any]:
    """Claims read straight from the (verified) quote body."""
    attributes = int.from_bytes(quote.td_attributes, "little")
    return {
        "tee": "tdx", "version": quote.version, "product": "tdx-1.5" if quote.body_type == 3 else "tdx-1.0",
        "measurement": quote.mr_td.hex(), "report_data": quote.report_data.hex(),
        "host_data": quote.mr_config_id.hex(), "policy": attributes, "debug": quote.debug,
        "rtmrs": [r.hex() for r in quote.rtmrs], "mr_seam": quote.mr_seam.hex(), "mr_owner": quote.mr_owner.hex(),
        "mr_owner_config": quote.mr_owner_config.hex(), "xfam": quote.xfam.hex(),
        "tee_tcb_svn": quote.tee_tcb_svn.hex(),
    }
