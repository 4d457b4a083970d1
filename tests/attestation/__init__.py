"""Tests for the attestation library and the enclave evidence providers."""
