"""Wire formats every party reads and writes: no secrets, no heavy dependencies, one home per format.

Each document has one versioned type here, strict parsing that names the field (`wire.errors.FormatError`),
and one canonical JSON encoding (RFC 8785, `wire.canonical`). The platform, the enclave, the brokers and
the clients all import these modules; none of them holds a key.
"""
