"""SQL-aware string mutants for the store's scope of ``make mutation`` (bench/mutation.py, ``Scope(sql=True)``).

mutmut mutates a string three ways: ``"XX" + s + "XX"``, ``s.lower()`` and ``s.upper()``. On SQL text the last two
are equivalent by construction (SQLite's keywords and names are case-insensitive, and so are ``sqlite3.Row``'s
column names), while the rules a store keeps live inside that text (``lease_token = ?``, ``lease_expires_at < ?``,
``lease_token + 1``, ``ORDER BY ... LIMIT ?``) and no operator of mutmut's ever touches them. So, for a string that
is SQL (it has an upper-case keyword), this keeps ``XX`` and puts in place of the case changes one mutant per
occurrence of:

- a comparison made stricter or looser (``<`` and ``<=``, ``>`` and ``>=``), a condition's ``=`` made ``!=``;
- ``AND`` and ``OR`` swapped, ``IS NULL`` and ``IS NOT NULL`` swapped, ``IN (`` made ``NOT IN (``, ``INSERT OR
  IGNORE`` made ``INSERT``;
- a number literal plus one (a lease's first token, ``lease_token + 1``, attempts 0);
- an ``ORDER BY`` reversed, a ``LIMIT ?`` made one more;
- a quoted literal upper-cased (``'pending'``: the one case change SQL does not ignore).

f-strings are included: mutmut leaves them alone, and ``_fenced``'s ``AND lease_owner = ? AND lease_token = ?``
is one. A string that is not SQL keeps mutmut's own mutants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import libcst as cst

SQL = re.compile(
    r"\b(SELECT|UPDATE|INSERT|DELETE|WHERE|AND|OR|SET|FROM|JOIN|VALUES|ORDER BY|LIMIT|RETURNING|IS NULL)\b"
)
# (pattern, replacement): each match is one mutant; group 1, when the pattern has one, is kept as it was.
SQL_MUTATIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"<(?![=>])"), "<="),
    (re.compile(r"<="), "<"),
    (re.compile(r"(?<![<-])>(?!=)"), ">="),
    (re.compile(r">="), ">"),
    # a condition's "=" (after WHERE, AND, OR or ON), not an assignment's (after SET)
    (re.compile(r"(\b(?:WHERE|AND|OR|ON)\s+[\w.]+\s*)=(?!=)"), "!="),
    (re.compile(r"\bAND\b"), "OR"),
    (re.compile(r"\bOR\b(?! IGNORE)"), "AND"),
    (re.compile(r"\bIS NOT NULL\b"), "IS NULL"),
    (re.compile(r"\bIS NULL\b"), "IS NOT NULL"),
    (re.compile(r"\bIN \("), "NOT IN ("),
    (re.compile(r"\bINSERT OR IGNORE\b"), "INSERT"),
    (re.compile(r"(ORDER BY [\w.]+)\b(?! DESC)"), " DESC"),
    (re.compile(r"(LIMIT \?)"), " + 1"),
]
NUMBER = re.compile(r"(?<![\w.?$'])\d+(?![\w.'])")
QUOTED = re.compile(r"'[^']*'")


def is_sql(text: str) -> bool:
    return SQL.search(text) is not None


def sql_mutants(text: str) -> Iterator[str]:
    """Every SQL mutant of ``text`` (one change each), none equal to it."""
    for pattern, replacement in SQL_MUTATIONS:
        for match in pattern.finditer(text):
            kept = match.group(1) if pattern.groups else ""
            yield text[: match.start()] + kept + replacement + text[match.end() :]
    for match in NUMBER.finditer(text):
        yield text[: match.start()] + str(int(match.group()) + 1) + text[match.end() :]
    for match in QUOTED.finditer(text):
        if match.group() != match.group().upper():
            yield text[: match.start()] + match.group().upper() + text[match.end() :]


def _simple(node: cst.SimpleString) -> Iterator[cst.SimpleString]:
    value = node.value
    quote_at = min(i for i in (value.find('"'), value.find("'")) if i != -1)
    prefix, quoted = value[:quote_at], value[quote_at:]
    quote, body = quoted[0], quoted[1:-1]
    yield node.with_changes(value=f"{prefix}{quote}XX{body}XX{quote}")
    for mutated in sql_mutants(body):
        yield node.with_changes(value=f"{prefix}{quote}{mutated}{quote}")


def _formatted(node: cst.FormattedString) -> Iterator[cst.FormattedString]:
    for index, part in enumerate(node.parts):
        if isinstance(part, cst.FormattedStringText):
            for mutated in sql_mutants(part.value):
                parts = list(node.parts)
                parts[index] = part.with_changes(value=mutated)
                yield node.with_changes(parts=parts)


def sql_aware(stock: Callable[[cst.BaseString], Iterable[cst.BaseString]]) -> Callable[..., Iterable[cst.BaseString]]:
    """mutmut's string operator, with SQL text mutated as SQL."""

    def operator(node: cst.BaseString) -> Iterable[cst.BaseString]:
        if isinstance(node, cst.SimpleString) and not node.value.lstrip("rRbBuU").startswith(('"""', "'''")):
            if is_sql(node.evaluated_value if isinstance(node.evaluated_value, str) else ""):
                return _simple(node)
        elif isinstance(node, cst.FormattedString):
            text = "".join(part.value for part in node.parts if isinstance(part, cst.FormattedStringText))
            if is_sql(text):
                return _formatted(node)
        return stock(node)

    return operator


def use_sql_operator() -> None:
    """Put ``sql_aware`` in place of mutmut's string operator (before mutmut generates any mutant)."""
    from mutmut.mutation import mutators

    operators = mutators.mutation_operators
    assert isinstance(operators, list)  # the list mutmut's visitor was given: replaced in place
    for index, (kind, operator) in enumerate(operators):
        if operator is mutators.operator_string:
            operators[index] = (kind, sql_aware(operator))
            return
    raise RuntimeError("mutmut's string operator not found: another mutmut version?")
