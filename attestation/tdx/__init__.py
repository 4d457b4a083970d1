"""Intel TDX: quotes (:mod:`.quote`), PCK certificate extensions (:mod:`.pck`) and Intel PCS
collateral, i.e. TCB Info and QE Identity, giving the platform's TCB status (:mod:`.collateral`).

Parse -> verify -> (TCB status) here; appraisal of the resulting claims is in
:func:`attestation.appraise`, the same as for SEV-SNP.
"""

from attestation.tdx.intel_root import INTEL_ROOT_SHA256, pinned_intel_root
from attestation.tdx.quote import (
    TEE_TDX,
    TdxQuote,
    parse_quote,
    verify_quote,
    verify_quote_and_pck,
)

__all__ = ["INTEL_ROOT_SHA256", "TEE_TDX", "TdxQuote", "parse_quote",
           "pinned_intel_root", "verify_quote", "verify_quote_and_pck"]
