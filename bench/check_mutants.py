"""Hand-written mutants of the security checks: each deletes or loosens one check, as a careless change would.

``CHECKS[module]`` lists (label, text in the module, its replacement, probe); ``bench/mutation.py --checks
MODULE`` applies each alone. The probe (a ``pytest -k`` expression over the module's tests) runs first: a
failure there kills the mutant; otherwise all the module's tests run, and a mutant they pass survived. A
survivor is a check no test guards, unless docs/MUTATION.md explains it as equivalent. ``None and f(...)``
skips a call, ``if False:`` a refusal.
"""

from __future__ import annotations

# Only a test that expects a refusal can kill a mutant that loosens one: each module's own tests, where its
# list in bench/mutation.py also holds tests of other modules (the shared 2-core machine ran 1-2 minutes a
# mutant over a whole list).
CHECK_TESTS: dict[str, list[str]] = {
    "enclave/worker.py": ["tests/enclave/test_worker_checks.py", "tests/enclave/test_ranged_input.py"],
    "attestation/anchors.py": ["tests/attestation/test_forgery_snp.py", "tests/attestation/test_snp_verify.py",
                               "tests/attestation/test_simulated_and_evidence.py"],
}

CHECKS: dict[str, list[tuple[str, str, str, str]]] = {
    "enclave/worker.py": [
        ("input binding not compared", "if found != expected.encode():", "if found is None:",
         "another or same_name"),
        ("tuned model's tenant not compared",
         "if tuned.tenant != spec.tenant or tuned.owner_broker != spec.owner_broker:",
         "if tuned.owner_broker != spec.owner_broker:", "tuned"),
        ("tuned model's owner broker not compared",
         "if tuned.tenant != spec.tenant or tuned.owner_broker != spec.owner_broker:",
         "if tuned.tenant != spec.tenant:", "tuned"),
        ("tuned model's card not compared to the spec",
         "if (card.name, card.version, card.digest) != (spec.model_name, spec.model_version, spec.model_digest):",
         "if False:", "tuned"),
        ("card name and version not compared to the spec",
         "if card.digest != spec.model_digest or (card.name, card.version) != (spec.model_name, spec.model_version):",
         "if card.digest != spec.model_digest:", "card"),
        ("card verified with every provider's keys",
         "keys = [k for p in self.config.providers if provider in (None, p.name) for k in p.card_keys]\n"
         "        card = verify_card(", "keys = [k for p in self.config.providers for k in p.card_keys]\n"
         "        card = verify_card(", "card"),
        ("rows counted per shard, not per batch", "if batch.scored_rows + rows > batch.granted_rows:",
         "if rows > batch.granted_rows:", "rows"),
        ("plaintext allowed for an encrypted model", "if spec.protection != \"none\" or card.protection != \"none\":\n"
         "            raise PlaintextRefused", "if spec.protection != \"none\":\n            raise PlaintextRefused",
         "plaintext"),
        ("model digest compared on a prefix", "if digest != card.digest:", "if digest[:20] != card.digest[:20]:",
         "swapped or not_the_cards or prefix"),
        ("results wrapped under any key", "if key_id != self._result_key_id:", "if False:", "wrapped"),
    ],
    "audit/verify.py": [
        ("entry not in canonical form accepted", "if not isinstance(entry, dict) or canonical_json(entry) != line:",
         "if not isinstance(entry, dict):", "changed or json or canonical"),
        ("release of a key never created", "if key is None:\n        return [*out", "if False:\n        return [*out",
         "release"),
        ("grant's keys not compared", "if e.get(\"key_id\") not in (grant.get(\"key_ids\") or []):", "if False:",
         "release"),
        ("grant's model not compared", "if e.get(\"model_digest\") != grant.get(\"model_digest\"):", "if False:",
         "release"),
        ("receipt's batch not compared to its path", "if p.get(\"batch_id\") != batch or p.get(\"tenant\")",
         "if p.get(\"tenant\")", "receipt"),
        ("receipt's output prefix not compared", "not str(p.get(\"output\", {}).get(\"key\", \"\")).startswith(prefix)",
         "False", "receipt"),
        ("receipt's model not compared to the grant",
         "if r.payload.get(\"model\", {}).get(\"digest\") != grant.get(\"model_digest\"):", "if False:", "receipt"),
        ("receipt's measurement not compared to the grant",
         "if r.claims.measurement not in (grant.get(\"granted_measurements\") or []):", "if False:", "receipt"),
        ("manifest's shard worker not compared",
         "if receipt is not None and shard.get(\"worker\") and shard.get(\"worker\") != receipt.get(\"worker\"):",
         "if False:", "manifest"),
        ("broker head hash not compared", "elif logged.get(head) != e.get(\"head_hash\"):", "elif False:", "sync"),
        ("training receipt's path not compared",
         "if key != f\"tuned/{p.get('tenant')}/{model.get('name')}/{model.get('version')}/receipt.jws\":",
         "if False:", "training"),
        ("unlogged training document accepted",
         "if key.endswith((\"/receipt.jws\", \"/card.jws\")) and _sha(_get(store, key)) not in known:", "if False:",
         "training"),
    ],
    "attestation/tdx/quote.py": [
        ("quote signature skipped", "_p256_verify(att_key, quote.signature",
         "None and _p256_verify(att_key, quote.signature", "signed"),
        ("QE report signature skipped", "_p256_verify(pck_key, quote.qe_report_signature",
         "None and _p256_verify(pck_key, quote.qe_report_signature", "signed"),
        ("attestation key binding on the hash half only", "if quote.qe_report[320:384] != expected:",
         "if quote.qe_report[320:352] != expected[:32]:", "report_data or bound"),
        ("PCK chain not verified", "pck = _verify_pck_chain(quote.pck_chain_pem, at, roots or (pinned_intel_root(),))",
         "pck = load_pem_certs(quote.pck_chain_pem, 'quote.pck_chain')[0]", "pck or ca or rogue"),
    ],
    "attestation/anchors.py": [
        ("issuer name not linked", "if cert.issuer != issuer.subject:", "if False:", "issuer or chain"),
        ("certificate signature skipped",
         "key.verify(cert.signature, cert.tbs_certificate_bytes, params, hashes.SHA384())", "None",
         "another or rogue"),
        ("RSA key size not checked", "if key.key_size < 2048 or not isinstance(digest, hashes.SHA384):",
         "if not isinstance(digest, hashes.SHA384):", "small"),
        ("root matched by name", "return next((r for r in self.roots if r.cert == cert), None)",
         "return next((r for r in self.roots if r.cert.subject == cert.subject), None)", "rogue"),
        ("pinned fingerprint not compared", "if actual != fingerprint:", "if False:", "pinned or packaged"),
    ],
    "attestation/evidence.py": [
        ("members compared on a prefix", "if value not in allowed:",
         "if not any(value[:16] == a[:16] for a in allowed):", "chip_id or whole"),
        ("host data not checked", "if policy.host_data is not None:", "if False:", "mismatch"),
        ("RTMRs not checked",
         "_check_member(name, actual, allowed, \"the TD's runtime measurements (kernel, command line, ...) differ\")",
         "None", "mismatch"),
        ("TD attributes not checked", "if policy.allowed_td_attributes is not None and claims.policy",
         "if False and claims.policy", "mismatch"),
        ("TCB status one rank worse", "rank(claims.tcb_status) <= rank(policy.min_tcb_status)",
         "rank(claims.tcb_status) <= rank(policy.min_tcb_status) + 1", "tcb_status or rank"),
        ("missing TCB component passes", "if tcb.get(component, -1) < floor:", "if tcb.get(component, 255) < floor:",
         "tcb"),
        ("report data compared on a prefix",
         "if len(report_data) != len(actual) or not hmac.compare_digest(report_data, actual):",
         "if not hmac.compare_digest(report_data[:32], actual[:32]):", "report_data or binding"),
    ],
}
