r"""Text from the registry, a policy, the audit log or a server, made safe to print on a terminal.

A comment, a model name, an actor or an event type is data someone else chose. Printed raw, an
ANSI or OSC escape in it can erase or rewrite the line an approver reads (``ESC[2K``, CR, BS),
a hyperlink can hide its target (OSC 8), a bidi override can reverse what follows (U+202E), and
a newline or line separator can start a line that looks like the command's own.
:func:`safe` shows every such character as a visible escape instead, and shows a backslash as
two, so the printed text is unambiguous: :func:`restore` gives back the exact original.

The escapes are Python's string-literal ones: ``\\``, ``\n``, ``\r``, ``\t``, then
``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN`` (lowercase hex) for any other character of the Unicode
categories Cc (C0 and C1 controls, DEL), Cf (format characters: bidi embeddings, overrides and
isolates, zero-width characters, soft hyphen), Cs (lone surrogates), Zl and Zp (U+2028, U+2029).
Every other character, printable Unicode included, is printed as it is.

Pure: no I/O, nothing imported beyond the standard library.
"""

from __future__ import annotations

import unicodedata

__all__ = ["UNSAFE_CATEGORIES", "restore", "safe"]

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LONG = {"x": 2, "u": 4, "U": 8}  # escape letter -> number of hex digits
_BACK = {v[1]: k for k, v in _SHORT.items()}  # "n" -> "\n", ...


def _escape(char: str) -> str:
    """The visible form of one character: itself, or its escape."""
    short = _SHORT.get(char)
    if short is not None:
        return short
    if unicodedata.category(char) not in UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: str) -> str:
    """``text`` on one line, with every control, format, bidi and line-breaking character and
    every backslash shown as an escape (see the module docstring); other text is unchanged.

    Distinct texts give distinct results (each character maps to its own code, and no code is
    the start of another), and :func:`restore` undoes it.
    """
    if "\\" not in text and text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(_escape(char) for char in text)


def restore(shown: str) -> str:
    """The text :func:`safe` was given, from what it returned.

    Raises ValueError for a backslash that does not start one of :func:`safe`'s escapes.
    """
    out: list[str] = []
    at = 0
    while at < len(shown):
        slash = shown.find("\\", at)
        if slash < 0:
            out.append(shown[at:])
            break
        out.append(shown[at:slash])
        letter = shown[slash + 1 : slash + 2]
        if letter in _BACK:
            out.append(_BACK[letter])
            at = slash + 2
            continue
        digits = _LONG.get(letter)
        hex_part = shown[slash + 2 : slash + 2 + digits] if digits else ""
        if not digits or len(hex_part) != digits or not _is_hex(hex_part):
            raise ValueError(f"not an escape of safe() at {slash}: {shown[slash : slash + 10]!r}")
        out.append(chr(int(hex_part, 16)))
        at = slash + 2 + digits
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
