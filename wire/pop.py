"""The proof of possession (PoP) a TEE signs for each request it makes with a broker's attestation token.

An ES256 JWS in the `KBS-PoP` header, typed `kbs-pop+jwt` (explicit typing, RFC 8725 section 3.11, so no other
JWS the same key might sign passes for one), over the claims `htm` (method), `htu` (path), `ath` (b64url SHA-256
of the token), `bh` (b64url SHA-256 of the body), `iat` (seconds) and `jti` (a unique id): DPoP's shape
(RFC 9449 section 4.2) with the body's hash added. The client (enclave) signs it, the broker checks it.
"""

POP_HEADER = "KBS-PoP"
POP_TYPE = "kbs-pop+jwt"
