"""Plain-text tables for people (``--json`` is for machines).

Fixed-width columns with no colour and no dependency: the output reads the same in a terminal, a
CI log, a pipe to ``less`` and a test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def cell(value: object) -> str:
    """A value as shown in a table: floats to 4 decimals, None as ``-``, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    return str(value)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()
) -> str:
    """Columns padded to their widest cell; the ``numeric`` column indices are right-aligned."""
    body = [[cell(v) for v in row] for row in rows]
    right = set(numeric)
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), *(line(r) for r in body)])


def fields(pairs: Iterable[tuple[str, object]], indent: str = "") -> str:
    """``key  value`` lines, the values aligned."""
    pairs = [(k, cell(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}".rstrip() for k, v in pairs)
