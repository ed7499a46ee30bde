"""Text people type, made safe to store and group: Unicode-normalised (NFKC) so look-alikes
are one value, invisible formatting characters stripped, control characters refused.

A fullwidth "Finance" followed by a zero-width space becomes a plain "Finance"; a name
with a NUL in it is refused. Applied at the HTTP edge
(request bodies) and in `grouping_key`, so an industry typed with a zero-width space still
groups with the plain one even when it arrives from another producer.
"""

from __future__ import annotations

import unicodedata

from pydantic import AfterValidator

# Categories refused outright: control (NUL, escapes), surrogates, private use, unassigned.
_REFUSED = {"Cc", "Cs", "Co", "Cn"}
# Format characters (zero-width space and joiners, bidi marks and overrides, BOM): stripped.
_STRIPPED = "Cf"


def clean(text: str, *, multiline: bool = False) -> str:
    """NFKC, format characters removed, whitespace collapsed (kept line breaks when
    `multiline`); ValueError on a control or unassigned character."""
    if text.isascii() and text.isprintable():
        return " ".join(text.split())  # the common case, without a per-character pass
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == _STRIPPED:
            continue
        if category in _REFUSED and not (multiline and ch in "\n\t"):
            raise ValueError(f"character U+{ord(ch):04X} is not allowed in text")
        kept.append(ch)
    text = "".join(kept)
    if multiline:
        return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())
    return " ".join(text.split())


def CleanLine(max_length: int, *, required: bool = False) -> AfterValidator:
    """Validator of one-line text: cleaned, then at most `max_length` characters (NFKC can
    lengthen text) and, when `required`, not blank. Bound the raw length before it too."""

    def check(text: str) -> str:
        return _bounded(clean(text), max_length, required)

    return AfterValidator(check)


def CleanLines(max_length: int) -> AfterValidator:
    """Validator of free text that may span lines (an invitation message)."""

    def check(text: str) -> str:
        return _bounded(clean(text, multiline=True), max_length, False)

    return AfterValidator(check)


def _bounded(text: str, max_length: int, required: bool) -> str:
    if len(text) > max_length:
        raise ValueError(f"at most {max_length} characters")
    if required and not text:
        raise ValueError("must not be blank")
    return text


def fold(text: str) -> str:
    """The key text groups by: cleaned, case-folded. Lenient (never raises): it also keys text
    that came from elsewhere, dropping what `clean` would refuse."""
    try:
        cleaned = clean(text)
    except ValueError:
        cleaned = clean("".join(ch for ch in text if unicodedata.category(ch) not in _REFUSED))
    return cleaned.casefold()
