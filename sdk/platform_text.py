"""Text the platform wrote (a batch's failure reason, its state), made safe to show on the owner's terminal, and
what the owner can do about a failure reason."""

from __future__ import annotations

import unicodedata

MAX_CHARS = 2_000  # a reason longer than this is cut: the platform could otherwise fill the owner's screen


def shown(value: object) -> str:
    """`str(value)` with every control or format character (newline, ESC, bidi overrides) written as its escape
    (`\\n`, `\\x1b`, `\\u202e`), cut to MAX_CHARS: one line that can neither move the cursor nor forge another."""
    text = str(value)[:MAX_CHARS]
    return "".join(c.encode("unicode_escape").decode() if unicodedata.category(c)[0] == "C" else c for c in text)


_ADVICE = [  # (words in the failure reason, what the owner can do); first match wins
    (("limitexceeded",),
     "The model outgrew the platform's per-batch limits (time per row or worker memory) named above; nothing was "
     "written. Choose a lighter model (`cscore models`), or once the platform's operator raises the limit "
     "(Airflow Variable cscore_limits): `cscore owner submit --resubmit BATCH --tenant TENANT`."),
    # Before the rules below: these reasons also name the model, the signed manifest or its digest.
    (("inputrefused", "shardinputerror", "manifest.objects["),
     "The batch's own input was refused (the file, row or field named above). Resubmitting sends the same "
     "input and fails the same way: fix the input, check it with `cscore owner submit EMAILS --dry-run --tenant "
     "TENANT`, then submit it as a new batch (`cscore owner submit EMAILS --model NAME:VERSION --tenant TENANT`)."),
    (("no grant", "not granted", "grant"),
     "The owner's key broker has no grant matching this batch, its model or the worker's measurement. "
     "Resubmitting the same manifest cannot help: submit the emails again as a new batch "
     "(`cscore owner submit ... --model NAME:VERSION --measurement HEX`), which records a new grant."),
    (("measurement",),
     "The workers run code whose measurement your grant or policy does not allow. Look at it with "
     "`cscore audit show BATCH`; grant it (`--measurement HEX` on a new submit) only after reviewing that "
     "worker image. Do not resubmit unchanged."),
    (("debug",),
     "A worker runs with debugging enabled, so the host could read its memory. The platform must relaunch "
     "its workers without debug; then `cscore owner submit --resubmit BATCH --tenant TENANT`."),
    (("tcb", "firmware", "microcode"),
     "A worker's firmware is below the TCB floor. The platform must update it; then "
     "`cscore owner submit --resubmit BATCH --tenant TENANT`."),
    (("chip",),
     "A worker runs on a chip your keys are not pinned to. Ask the platform which machines it uses, or "
     "update the key's chip_ids; then `cscore owner submit --resubmit BATCH --tenant TENANT`."),
    (("signature", "signed", "tenant key", "unknown tenant"),
     "The platform could not verify your manifest's signature: check this tenant is registered "
     "(`cscore owner register --tenant TENANT`) with your current key; then "
     "`cscore owner submit --resubmit BATCH --tenant TENANT`."),
    (("model", "card", "digest"),
     "The model you chose is not published as named (or its digest changed). Check `cscore models` and "
     "submit again with the right --model."),
    (("unreachable", "connect", "timed out", "timeout", "unfinished", "no worker", "down"),
     "A part was unavailable (broker, workers or storage); nothing was decrypted by anyone else. When it is "
     "back: `cscore owner submit --resubmit BATCH --tenant TENANT` (finished shards are reused)."),
]


def advice(reason: str, batch_id: str, tenant: str) -> str:
    """What the owner can do about a failed batch, by its failure reason; commands complete as written (`--resubmit`
    and `register` need the tenant)."""
    lowered = reason.lower()
    for words, text in _ADVICE:
        if any(w in lowered for w in words):
            return text.replace("BATCH", batch_id).replace("TENANT", tenant)
    return (f"Fix the cause named above, then `cscore owner submit --resubmit {batch_id} --tenant {tenant}`; "
            f"`cscore audit show {batch_id}` shows every step the log recorded.")
