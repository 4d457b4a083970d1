"""AMD SEV-SNP: report parsing/encoding (:mod:`.report`) and verification (:mod:`.verify`)."""
