"""Audience expressions → one SQL condition over the residents table.

    tag:elderly and tag:empty_nest and grid:QH-DH
    (tag:disabled or tag:elderly) and not channel:telegram
    all

Terms: `tag:<tag>`, `grid:<code>` (the grid and everything under it), `language:<code>` (or `lang:`),
`channel:sms|telegram` (the channel a resident is reached on: telegram when a chat is linked),
and `all`. `not` binds tighter than `and`, which binds tighter than `or`; parentheses group.
The whole thing becomes a WHERE clause, so an audience of a million is streamed, never loaded.
An expression has at most MAX_LENGTH characters and nests (parentheses and `not`) at most
MAX_DEPTH deep, so parsing it, and compiling its SQL, never recurses without bound.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Text, and_, cast, not_, or_, select, true
from sqlalchemy.orm import Session

from gateway.domain.city import CHANNELS
from gateway.store import GridRow, ResidentRow

KEYS = {"tag": "tag", "grid": "grid", "language": "language", "lang": "language", "channel": "channel"}
_TOKEN = re.compile(r"\s*(?:(\()|(\))|([^\s()]+))")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
MAX_LENGTH = 2000  # characters: room for a few hundred terms, far more than any real audience
MAX_DEPTH = 16  # parentheses and `not`s inside each other


class AudienceError(ValueError):
    """An expression we cannot use, with a reason an operator can act on."""


@dataclass(frozen=True)
class Term:
    key: str  # tag, grid, language, channel, or all (value empty)
    value: str
    column: int  # 1-based position in the expression, for error messages


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = Term | Not | And | Or


# --- parsing ------------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, int]]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match is not None  # the pattern accepts any non-space run
        token = match.group(match.lastindex)
        tokens.append((token, match.start(match.lastindex) + 1))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent: or_expr := and_expr (or and_expr)*; and_expr := unary (and unary)*;
    unary := not unary | ( or_expr ) | term."""

    def __init__(self, text: str):
        if len(text) > MAX_LENGTH:
            raise AudienceError(f"the audience is longer than {MAX_LENGTH} characters")
        self.tokens = _tokens(text)
        self.at = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.at][0].lower() if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, int]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def where(self) -> str:
        return f"column {self.tokens[self.at][1]}" if self.at < len(self.tokens) else "the end"

    def parse(self) -> Node:
        if not self.tokens:
            raise AudienceError("empty audience: write e.g. `tag:elderly and grid:<code>`, or `all`")
        node = self.or_expr()
        if self.at < len(self.tokens):
            token, column = self.tokens[self.at]
            raise AudienceError(f"unexpected {token!r} at column {column}: join terms with and / or")
        return node

    def or_expr(self) -> Node:
        operands = [self.and_expr()]
        while self.peek() == "or":
            self.take()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Node:
        operands = [self.unary()]
        while self.peek() == "and":
            self.take()
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self) -> Node:
        word = self.peek()
        if word is None:
            raise AudienceError("the expression ends where a term was expected")
        if word in ("not", "("):
            _, column = self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise AudienceError(f"the expression nests deeper than {MAX_DEPTH} levels of parentheses "
                                    f"and `not` at column {column}")
            node = Not(self.unary()) if word == "not" else self.or_expr()
            if word == "(" and self.peek() != ")":
                raise AudienceError(f"the parenthesis opened at column {column} is not closed "
                                    f"(found {self.where()})")
            if word == "(":
                self.take()
            self.depth -= 1
            return node
        if word in ("and", "or", ")"):
            token, column = self.tokens[self.at]
            raise AudienceError(f"expected a term at column {column}, found {token!r}")
        token, column = self.take()
        if word in ("all", "everyone"):
            return Term("all", "", column)
        key, sep, value = token.partition(":")
        if not sep or not value or key.lower() not in KEYS:
            raise AudienceError(f"unknown term {token!r} at column {column}: use tag:, grid:, language:, "
                                f"channel: or all")
        return Term(KEYS[key.lower()], value, column)


def parse(text: str) -> Node:
    """The expression as a tree; AudienceError says what is wrong and where."""
    return _Parser(text).parse()


def confined(node: Node, tree: GridTree, scope: str) -> bool:
    """Whether the expression itself keeps everyone it matches inside grid `scope`'s subtree.

    Decided from the expression alone, never by counting residents, so a refusal tells an
    operator nothing about who lives outside their jurisdiction: a `grid:` term inside the scope
    confines, an `and` is confined by any confined operand, an `or` only by all of them.
    """
    if isinstance(node, Term):
        return node.key == "grid" and node.value in tree.parents and tree.within(node.value, scope)
    if isinstance(node, And):
        return any(confined(operand, tree, scope) for operand in node.operands)
    if isinstance(node, Or):
        return all(confined(operand, tree, scope) for operand in node.operands)
    return False  # `not` anything reaches the rest of the city


def terms(node: Node) -> Iterable[Term]:
    if isinstance(node, Term):
        yield node
    elif isinstance(node, Not):
        yield from terms(node.operand)
    else:
        for operand in node.operands:
            yield from terms(operand)


# --- the grid hierarchy -------------------------------------------------------------------------


class GridTree:
    """Parent links of every grid (a few thousand rows at most): subtrees without loading the city."""

    def __init__(self, parents: dict[str, str | None]):
        self.parents = parents

    @classmethod
    def load(cls, session: Session) -> GridTree:
        return cls({code: parent for code, parent in session.execute(select(GridRow.code, GridRow.parent_code))})

    def within(self, code: str, ancestor: str) -> bool:
        current: str | None = code
        while current is not None:
            if current == ancestor:
                return True
            current = self.parents.get(current)
        return False

    def subtree(self, code: str) -> list[str]:
        return [c for c in self.parents if self.within(c, code)]


# --- SQL ------------------------------------------------------------------------------------------


def has_tag(tag: str) -> ColumnElement[bool]:
    # Tags are stored as a JSON array; its text holds each tag quoted, on SQLite and PostgreSQL alike.
    return cast(ResidentRow.tags, Text).contains(f'"{tag}"', autoescape=True)


def in_grid(tree: GridTree, code: str) -> ColumnElement[bool]:
    return ResidentRow.grid_code.in_(tree.subtree(code))


def reached_on(channel: str) -> ColumnElement[bool]:
    linked = ResidentRow.telegram_chat_id.is_not(None)
    return linked if channel == "telegram" else not_(linked)


def known_tags(session: Session) -> list[str]:
    """Every tag some resident has (for error messages only: it reads each distinct tag set)."""
    found: set[str] = set()
    # Grouped as text: PostgreSQL's json type has no equality, and it must select what it groups by.
    as_text = cast(ResidentRow.tags, Text)
    for tags in session.scalars(select(as_text).group_by(as_text)):
        found.update(json.loads(tags))
    return sorted(found)


def _check(session: Session, tree: GridTree, term: Term) -> None:
    if term.key == "tag" and session.scalar(select(ResidentRow.id).where(has_tag(term.value)).limit(1)) is None:
        raise AudienceError(f"unknown tag {term.value!r} at column {term.column}: no resident has it "
                            f"(tags in use: {', '.join(known_tags(session))})")
    if term.key == "grid" and term.value not in tree.parents:
        raise AudienceError(f"unknown grid {term.value!r} at column {term.column}")
    if term.key == "channel" and term.value not in CHANNELS:
        raise AudienceError(f"unknown channel {term.value!r} at column {term.column}: "
                            f"use {' or '.join(CHANNELS)}")
    if term.key == "language" and not _LANGUAGE.fullmatch(term.value):
        raise AudienceError(f"bad language {term.value!r} at column {term.column}: use a code such as zh")


def _sql(tree: GridTree, node: Node) -> ColumnElement[bool]:
    if isinstance(node, Not):
        return not_(_sql(tree, node.operand))
    if isinstance(node, And):
        return and_(*(_sql(tree, operand) for operand in node.operands))
    if isinstance(node, Or):
        return or_(*(_sql(tree, operand) for operand in node.operands))
    return {
        "all": lambda _: true(),
        "tag": has_tag,
        "grid": lambda code: in_grid(tree, code),
        "language": lambda language: ResidentRow.language == language,
        "channel": reached_on,
    }[node.key](node.value)


def condition(session: Session, tree: GridTree, expression: str) -> ColumnElement[bool]:
    """The WHERE condition selecting the residents `expression` describes; AudienceError if unusable."""
    node = parse(expression)
    for term in terms(node):
        _check(session, tree, term)
    return _sql(tree, node)
