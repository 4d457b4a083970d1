"""Auditor side: a tamper-evident transparency log of key releases, receipts and batches, and its checks.

Client side only: nothing in `enclave/` or `dags/` imports this package (checked by import-linter).
"""
