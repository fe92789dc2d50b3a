"""A generated corpus of sentences with planted personal data: what scrubbing recall is
measured on (`benchmarks/pii_recall.py`, the tests). Synthetic values only: valid card
numbers (Luhn) and IBANs (mod 97), phone numbers in common formats, IPs, URLs, e-mails."""

from __future__ import annotations

import random
import string

__all__ = ["TEMPLATES", "corpus"]

TEMPLATES = (
    "Please contact me at {} about my order.",
    "my details: {} thanks",
    "The refund went to {} yesterday, can you check?",
    "{} is the one I used",
    "Sent from {} — do not reply.",
    "Hi, it's Sam again ({}) the app crashed twice",
)
DOMAINS = ("example.com", "mail.co.uk", "uni-bonn.de", "startup.io", "shop.fr")
NAMES = ("jane", "li.wei", "omar", "ana-maria", "k.tanaka", "sven")


def _luhn_complete(digits: str) -> str:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 0:  # these get doubled once the check digit is appended
            n = n * 2 - 9 if n * 2 > 9 else n * 2
        total += n
    return digits + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def part(alphabet: str, k: int) -> str:
        return "".join(rng.choices(alphabet, k=k))

    country, bban = rng.choice(
        [
            ("DE", part(string.digits, 18)),
            ("GB", part(upper, 4) + part(string.digits, 14)),
            ("FR", part(string.digits, 23)),
            ("NL", part(upper, 4) + part(string.digits, 10)),
        ]
    )
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    iban = f"{country}{check:02d}{bban}"
    if rng.random() < 0.5:
        iban = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _value(kind: str, rng: random.Random) -> str:
    if kind == "EMAIL_ADDRESS":
        return f"{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
    if kind == "PHONE_NUMBER":
        a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
        return rng.choice(
            [
                f"+1 {a}-{b}-{c:04d}",
                f"({a}) {b}-{c:04d}",
                f"+44 20 7{rng.randint(100, 999)} {c:04d}",
                f"+49 30 {rng.randint(1000000, 9999999)}",
            ]
        )
    if kind == "CREDIT_CARD":
        prefix, length = rng.choice([("4", 16), ("5" + str(rng.randint(1, 5)), 16), ("37", 15)])
        body = prefix + "".join(rng.choices(string.digits, k=length - len(prefix) - 1))
        number = _luhn_complete(body)
        sep = rng.choice(["", " ", "-"])
        if length == 16:
            return sep.join(number[i : i + 4] for i in range(0, 16, 4))
        return sep.join([number[:4], number[4:10], number[10:]])
    if kind == "IBAN_CODE":
        return _iban(rng)
    if kind == "IP_ADDRESS":
        if rng.random() < 0.8:
            return ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
    if kind == "URL":
        path = "".join(rng.choices(string.ascii_lowercase, k=6))
        return rng.choice(
            [
                f"https://www.{rng.choice(DOMAINS)}/{path}",
                f"http://{rng.choice(DOMAINS)}/{path}?id={rng.randint(1, 999)}",
                f"https://{rng.choice(DOMAINS)}",
            ]
        )
    raise ValueError(kind)


def corpus(kinds: tuple[str, ...], per_kind: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """(sentence, kind, planted value) triples; the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for kind in kinds:
        for _ in range(per_kind):
            value = _value(kind, rng)
            out.append((rng.choice(TEMPLATES).format(value), kind, value))
    return out
