"""The keyword query language: parse a topic's text once into an immutable, hashable Query.

Grammar (lowest precedence first):
    query  := alt ((","|newline) alt)*       alternatives: any may match
    alt    := and ("OR" and)*
    and    := unary (["AND"] unary)*         juxtaposition is AND
    unary  := "NOT" unary | "-" unary | FIELD ":" unary | primary
    primary:= word | word* | "phrase" | upvotes>=N | authors<=N | "(" query ")"
An alternative made only of exclusions excludes from the whole topic. Leaves and boolean nodes
are plain tuples (Node) with order-free children, so equal sub-expressions of different queries
are equal keys and the matcher evaluates each once per batch.
"""

from __future__ import annotations

import array
import functools
import hashlib
import itertools
import marshal
import re
import struct
import sys
import threading
import unicodedata
import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

from digest import text as textmod
from digest.errors import QueryError

FIELDS = ("title", "abstract", "org")
NUMERIC = ("upvotes", "authors")
OPERATORS = ("<=", ">=", "<", ">", "=")


class Node(NamedTuple):
    """A query node. kind: t (stem), p (phrase stems), x (prefix), o (org), n (number),
    and, or, not, m (most of its words, see _loose). field: "title", "abstract" or None
    (either). arg: the kind's payload."""

    kind: str
    field: str | None
    arg: object

    # Typed views of `arg`, one per kind, so callers need no casts.
    @property
    def children(self) -> frozenset[Node]:
        """The operands of an `and` / `or` / `m` node."""
        return cast("frozenset[Node]", self.arg)

    @property
    def child(self) -> Node:
        """The operand of a `not` node."""
        return cast(Node, self.arg)

    @property
    def word(self) -> str:
        """The stem of a `t` node, the prefix of an `x` node."""
        return cast(str, self.arg)

    @property
    def words(self) -> tuple[str, ...]:
        """The stems of a `p` (phrase) node, the words of an `o` (organization) node."""
        return cast("tuple[str, ...]", self.arg)

    @property
    def condition(self) -> tuple[str, str, int]:
        """(name, operator, value) of an `n` (number) node."""
        return cast("tuple[str, str, int]", self.arg)


class Query:
    """A compiled topic query: its text, boolean tree and the positive words for highlighting.

    Immutable. A query decoded from its stored form (decode_queries) holds only its text and
    program at first: the batch matcher reads nothing else, and the tree is built from the
    form the first time anything asks for it (root, terms...), so a fresh process matching
    100k stored topics builds no tree it never reads.
    """

    __slots__ = ("_tree", "program", "text")
    # every field, in the order of the constructor (tests compare decoded queries by them)
    FIELDS = ("text", "root", "terms", "literals", "negated", "conj_sizes", "clause_sizes",
              "program")  # fmt: skip

    text: str
    # root: the boolean tree; terms: its positive words, phrases and prefixes; literals, negated,
    # conj_sizes, clause_sizes: the root flattened for the batch matcher, an AND of clauses,
    # each an OR of conjunctions of literals (a literal is any node, negated or not; flatten())
    # program: the same as one flat tuple of process-wide leaf ids (see leaf_id), so the matcher
    # reads a batch of queries without hashing a single Node: [number of positive words, their
    # ids, number of clauses, per clause: number of conjunctions, per conjunction: number of
    # literals, each literal as id << 1 | negated], packed as native int64s
    program: bytes
    # (root, terms, literals, negated, conj_sizes, clause_sizes), or the stored form's tree
    # layer (bytes) until anything reads it
    _tree: tuple[Node, tuple, tuple, tuple, tuple, tuple] | bytes

    def __init__(
        self,
        text: str,
        root: Node,
        terms: tuple[Node, ...] = (),
        literals: tuple[Node, ...] = (),
        negated: tuple[bool, ...] = (),
        conj_sizes: tuple[int, ...] = (),
        clause_sizes: tuple[int, ...] = (),
        program: bytes = b"",
    ) -> None:
        _SET_TEXT(self, text)
        _SET_PROGRAM(self, program)
        _SET_TREE(self, (root, terms, literals, negated, conj_sizes, clause_sizes))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Query is immutable: cannot set {name}")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # pickled and copied as its text: its program holds this process's leaf ids
        return compile_query, (self.text,)

    def _parts(self) -> tuple[Node, tuple, tuple, tuple, tuple, tuple]:
        tree = self._tree
        if tree.__class__ is bytes:  # threads that meet it at once build equal trees
            try:
                tree = _decode_tree(tree)
            except Exception:  # a damaged tree layer: the text itself, compiled afresh
                tree = _compile(self.text)._parts()
            _SET_TREE(self, tree)
        return cast("tuple[Node, tuple, tuple, tuple, tuple, tuple]", tree)

    @property
    def root(self) -> Node:
        """The boolean tree."""
        return self._parts()[0]

    @property
    def terms(self) -> tuple[Node, ...]:
        """The positive words, phrases and prefixes, for highlighting and scoring."""
        return self._parts()[1]

    @property
    def literals(self) -> tuple[Node, ...]:
        """The flattened root's literals (see flatten)."""
        return self._parts()[2]

    @property
    def negated(self) -> tuple[bool, ...]:
        """Whether each literal is negated."""
        return self._parts()[3]

    @property
    def conj_sizes(self) -> tuple[int, ...]:
        """Literals per conjunction of the flattened root."""
        return self._parts()[4]

    @property
    def clause_sizes(self) -> tuple[int, ...]:
        """Conjunctions per clause of the flattened root."""
        return self._parts()[5]

    def __hash__(self) -> int:
        return hash(self.root)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and self.root == other.root

    def __repr__(self) -> str:
        return f"Query({self.text!r})"


_SET_TEXT = Query.__dict__["text"].__set__
_SET_PROGRAM = Query.__dict__["program"].__set__
_SET_TREE = Query.__dict__["_tree"].__set__


def describe_node(node: Node) -> str:
    """A readable form of a leaf (for debugging and previews)."""
    prefix = f"{node.field}:" if node.field else ""
    if node.kind == "t":
        return prefix + str(node.arg)
    if node.kind == "p":
        return prefix + '"' + " ".join(node.words) + '"'
    if node.kind == "x":
        return f"{prefix}{node.arg}*"
    if node.kind == "o":
        return "org:" + " ".join(node.words)
    if node.kind == "n":
        name, op, value = node.condition
        return f"{name}{op}{value}"
    if node.kind == "not":
        return "NOT " + describe_node(node.child)
    if node.kind == "m":
        return "MOST(" + ", ".join(sorted(describe_node(c) for c in node.children)) + ")"
    joiner = " AND " if node.kind == "and" else " OR "
    return "(" + joiner.join(sorted(describe_node(c) for c in node.children)) + ")"


def describe_error(text: str, err: QueryError) -> str:
    """The offending line of the query with a caret under the error's column, then the message."""
    offset = max(0, min(err.column - 1, len(text)))
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    where = ""
    if "\n" in text:
        where = f"line {text.count(chr(10), 0, offset) + 1}: "
    caret = " " * (len(where) + offset - line_start) + "^"
    return f"{where}{line}\n{caret}\n{err}"


# ---------------------------------------------------------------- lexer


class _Tok(NamedTuple):
    kind: str  # word, phrase, num, field, (, ), sep, AND, OR, NOT, -
    value: object
    col: int  # 1-based
    end: int  # 1-based column after the token


# Parentheses and NOTs, counted together: far beyond any real topic, far below Python's
# recursion limit for every function that walks a query tree.
MAX_DEPTH = 32
_BARE_STOP = set(' \t\r\n,()"“”')
_NUM_RE = re.compile(r"([A-Za-z_]+)(<=|>=|<|>|=)(.*)\Z", re.S)
_SPACED_NUM = re.compile(r"(?i)(upvotes|authors)[ \t]*(<=|>=|<|>|=)[ \t]*([^\s,()\"]*)")
_FIELD_RE = re.compile(r"([A-Za-z_]+):(.*)\Z", re.S)
_OPS = frozenset(("<=", ">="))  # the two-character comparisons, for `upvotes > = 3`
_QUOTES = {'"': '"', "“": "”", "”": "”"}


def _err(text: str, col: int, message: str, hint: str = "") -> QueryError:
    return QueryError(message, query=text, column=col, hint=hint)


def _lex(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        col = i + 1
        if c in " \t\r":
            i += 1
        elif c == "\n":
            out.append(_Tok("sep", "\n", col, col + 1))
            i += 1
        elif c == ",":
            out.append(_Tok("sep", ",", col, col + 1))
            i += 1
        elif c in "()":
            out.append(_Tok(c, c, col, col + 1))
            i += 1
        elif c in _QUOTES:
            close = text.find(_QUOTES[c], i + 1)
            if c == '"' and close < 0:
                close = text.find("”", i + 1)
            if close < 0:
                raise _err(text, col, "unbalanced quote", 'close the phrase with "')
            out.append(_Tok("phrase", text[i + 1 : close], col, close + 2))
            i = close + 1
        elif c == "-" and (i + 1 >= n or text[i + 1] in " \t\r\n,)"):
            raise _err(text, col, "'-' excludes the word after it, but none follows",
                       "write -word or -\"a phrase\" without a space")  # fmt: skip
        elif c == "-":
            out.append(_Tok("-", c, col, col + 1))
            i += 1
        elif (m := _SPACED_NUM.match(text, i)) is not None:
            # "upvotes >= 10" is read as upvotes>=10
            if m.group(3)[:1] in ("<", ">", "=") and m.group(2) + m.group(3)[0] in _OPS:
                # `upvotes > = 3`
                op = m.group(2) + m.group(3)[0]
                raise _err(text, m.start(2) + 1, "a space inside a comparison operator",
                           f"write it in one piece, e.g. {m.group(1)}{op}3")  # fmt: skip
            _lex_bare(text, m.group(1) + m.group(2) + m.group(3), i, out)
            i = m.end()
        else:
            j = i
            while j < n and text[j] not in _BARE_STOP:
                j += 1
            _lex_bare(text, text[i:j], i, out)
            i = j
    return out


def _lex_bare(text: str, bare: str, i: int, out: list[_Tok]) -> None:
    col, end = i + 1, i + len(bare) + 1
    if bare in ("AND", "OR", "NOT"):
        out.append(_Tok(bare, bare, col, end))
        return
    m = _NUM_RE.match(bare)
    if m and ":" not in m.group(1):
        name, op, value = m.group(1).lower(), m.group(2), m.group(3)
        if name not in NUMERIC:
            raise _err(text, col, f"unknown number field {m.group(1)!r}",
                       "numbers are upvotes and authors, e.g. upvotes>=10; "
                       'quote text to search for it')  # fmt: skip
        vcol = col + len(m.group(1)) + len(op)
        if not re.fullmatch(r"\d{1,9}", value):
            raise _err(text, vcol, f"bad number {value!r} after {name}{op}",
                       f"write a whole number, e.g. {name}{op}10")  # fmt: skip
        out.append(_Tok("num", (name, op, int(value)), col, end))
        return
    m = _FIELD_RE.match(bare)
    if m:
        name = m.group(1).lower()
        if name not in FIELDS:
            hint = "fields are title:, abstract: and org:; quote text to search for it"
            raise _err(text, col, f"unknown field {m.group(1)!r}", hint)
        out.append(_Tok("field", name, col, col + len(m.group(1)) + 1))
        if m.group(2):
            _lex_bare(text, m.group(2), i + len(m.group(1)) + 1, out)
        return
    out.append(_Tok("word", bare, col, end))


# ---------------------------------------------------------------- parser


def _and(children: list[Node]) -> Node:
    flat: set[Node] = set()
    for c in children:
        flat.update(c.children if c.kind == "and" else (c,))
    return next(iter(flat)) if len(flat) == 1 else Node("and", None, frozenset(flat))


def _or(children: list[Node]) -> Node:
    flat: set[Node] = set()
    for c in children:
        flat.update(c.children if c.kind == "or" else (c,))
    return next(iter(flat)) if len(flat) == 1 else Node("or", None, frozenset(flat))


def _not(child: Node) -> Node:
    return child.child if child.kind == "not" else Node("not", None, child)


class _Parser:
    def __init__(self, text: str, toks: list[_Tok]) -> None:
        self.text = text
        self.toks = toks
        self.i = 0
        self.group_field: str | None = None  # set while parsing inside title:( ... )

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def err(self, col: int, message: str, hint: str = "") -> QueryError:
        return _err(self.text, col, message, hint)

    def alternatives(self, depth: int) -> list[tuple[Node, int]]:
        """Alternatives separated by commas/newlines, up to a closing parenthesis or the end."""
        alts: list[tuple[Node, int]] = []
        commas_since = 0
        last_sep: _Tok | None = None
        while True:
            tok = self.peek()
            if tok is None or tok.kind == ")":
                if last_sep is not None and commas_since and alts:
                    raise self.err(last_sep.col, "empty alternative after ','",
                                   "remove the trailing comma")  # fmt: skip
                return alts
            if tok.kind == "sep":
                if tok.value == ",":
                    if not alts or commas_since:
                        raise self.err(tok.col, "empty alternative before ','",
                                       "put words between the commas or remove one")  # fmt: skip
                    commas_since += 1
                last_sep = tok
                self.i += 1
                continue
            commas_since = 0
            last_sep = None
            col = tok.col
            alts.append((self.or_expr(depth), col))

    def or_expr(self, depth: int) -> Node:
        parts = [self.and_expr(depth)]
        while (tok := self.peek()) is not None and tok.kind == "OR":
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind in ("sep", ")", "OR", "AND"):
                raise self.err(tok.col, "OR needs a term after it", "write a OR b")
            parts.append(self.and_expr(depth))
        return _or(parts)

    def and_expr(self, depth: int) -> Node:
        tok = self.peek()
        if tok is not None and tok.kind in ("AND", "OR"):
            raise self.err(tok.col, f"{tok.kind} needs a term before it", f"write a {tok.kind} b")
        spans = [self.i]  # where each part's tokens start
        parts = [self.unary(depth, None)]
        explicit = False  # an AND between parts keeps every part required
        while (tok := self.peek()) is not None and tok.kind not in ("sep", ")", "OR"):
            if tok.kind == "AND":
                explicit = True
                self.i += 1
                nxt = self.peek()
                if nxt is None or nxt.kind in ("sep", ")", "OR", "AND"):
                    raise self.err(tok.col, "AND needs a term after it", "write a AND b")
            spans.append(self.i)
            parts.append(self.unary(depth, None))
        spans.append(self.i)
        # Juxtaposed words (no AND, field or group among them), and exclusions beside them:
        # the words are read as plain words, the exclusions required on top, so an exclusion
        # means the same inside a forgiving alternative as at its side (`a b c -x`).
        one = [spans[k + 1] - spans[k] == 1 for k in range(len(parts))]  # a part of one token
        negs = [x for x, single in zip(parts, one, strict=True) if not single and x.kind == "not"]
        if explicit or len(negs) + sum(one) != len(parts) or not any(one):
            return _and(parts)
        toks = [self.toks[spans[k]] for k in range(len(parts)) if one[k]]
        words = [x for x, single in zip(parts, one, strict=True) if single]
        # a phrase or a number condition is one token too: beside it stop words still go, but
        # only plain words forgive or join as compounds
        plain = [t.kind == "word" and "*" not in str(t.value) for t in toks]
        stops = [p and _is_stop(str(t.value)) for p, t in zip(plain, toks, strict=True)]
        if all(stops):
            return _and(parts)
        # stop words are ignored
        kept = [t for t, stop in zip(toks, stops, strict=True) if not stop]
        words = [x for x, stop in zip(words, stops, strict=True) if not stop]
        positive = _and(words)
        if all(plain) and len(words) >= LOOSE_FROM:
            positive = _loose(words)
        elif len(words) == 2 and all(plain) and all(x.kind == "t" for x in words):
            # fine tuning: both words, or the word finetuning
            head, tail = (str(t.value) for t in kept)
            if head.casefold() in COMPOUND_PREFIXES and (joined := textmod.joined(head, tail)):
                positive = _or([_and(words), Node("t", None, textmod.stem(joined))])
        return _and([positive, *negs]) if negs else positive

    def unary(self, depth: int, fld: str | None) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.err(len(self.text) + 1, "the query ends where a term was expected")
        if tok.kind in ("NOT", "-"):
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind in ("sep", ")", "AND", "OR"):
                raise self.err(tok.col, f"{tok.value} needs a term after it",
                               "write NOT word or -word")  # fmt: skip
            self.check_depth(tok, depth + 1)
            return _not(self.unary(depth + 1, fld))
        if tok.kind == "field":
            self.i += 1
            nxt = self.peek()
            if nxt is None or nxt.kind in ("sep", ")", "AND", "OR"):
                raise self.err(tok.col, f"{tok.value}: needs a word, phrase or group after it",
                               f'write {tok.value}:word or {tok.value}:"a phrase"')  # fmt: skip
            outer = fld or self.group_field
            if outer is not None:
                raise self.err(tok.col, f"{tok.value}: inside a {outer}: group",
                               "use one field per group")  # fmt: skip
            if tok.value == "org":
                return self.org(nxt)
            self.group_field = str(tok.value)
            try:
                return self.unary(depth, str(tok.value))
            finally:
                self.group_field = None
        return self.primary(depth, fld)

    def check_depth(self, tok: _Tok, depth: int) -> None:
        """Refuse nesting past MAX_DEPTH (the parser and the matcher recurse over the tree)."""
        if depth > MAX_DEPTH:
            raise self.err(tok.col, f"nested more than {MAX_DEPTH} levels deep",
                           "use fewer parentheses and NOTs")  # fmt: skip

    def org(self, tok: _Tok) -> Node:
        self.i += 1
        if tok.kind not in ("word", "phrase"):
            raise self.err(
                tok.col, "org: takes a name or id", 'write org:nvidia or org:"Google DeepMind"'
            )
        if "*" in str(tok.value):
            raise self.err(tok.col, "org: does not take *",
                           "write an id or a word of the name, e.g. org:microsoft")  # fmt: skip
        words = tuple(t.norm for t in textmod.tokenize(str(tok.value)))
        if not words:
            raise self.err(tok.col, "org: needs letters or digits", "write org:nvidia")
        return Node("o", None, words)

    def primary(self, depth: int, fld: str | None) -> Node:
        tok = self.peek()
        assert tok is not None
        self.i += 1
        if tok.kind == "(":
            self.check_depth(tok, depth + 1)
            alts = self.alternatives(depth + 1)
            close = self.peek()
            if close is None:
                raise self.err(tok.col, "unbalanced parenthesis", "add the closing )")
            self.i += 1
            if not alts:
                raise self.err(tok.col, "empty parentheses", "put words inside ( ) or remove them")
            node = _combine(self.text, alts)
            return _with_field(node, fld) if fld else node
        if tok.kind == ")":
            raise self.err(tok.col, "unbalanced parenthesis", "remove this ) or add a (")
        if tok.kind == "num":
            if fld:
                raise self.err(tok.col, f"{fld}: cannot apply to a number condition")
            return Node("n", None, tok.value)
        if tok.kind == "phrase":
            raw = str(tok.value)
            if "*" in raw:
                raise self.err(tok.col, "* is not allowed inside a phrase",
                               "use word* outside quotes")  # fmt: skip
            toks = _tokens(raw)
            if not toks:
                raise self.err(tok.col, "empty phrase", "put words between the quotes")
            return _leaf(toks, fld)
        if tok.kind == "word":
            return self.word(tok, fld)
        raise self.err(tok.col, f"unexpected {tok.value!r}")

    def word(self, tok: _Tok, fld: str | None) -> Node:
        raw = str(tok.value)
        star = raw.find("*")
        if star >= 0:
            if star != len(raw) - 1:
                raise self.err(tok.col + star, "* only goes at the end of a word",
                               "write prefix* (e.g. prun*)")  # fmt: skip
            toks = _tokens(raw[:-1])
            if len(toks) != 1 or toks[0].end != star:
                raise self.err(tok.col, f"{raw!r}: * needs exactly one word before it",
                               "write prefix* on a single word, e.g. prun*")  # fmt: skip
            return Node("x", fld, toks[0].norm)
        toks = _tokens(raw)
        if not toks:
            if raw in ("<", "<=", "=", ">=", ">"):  # `citations >= 5`: no such number field
                raise self.err(tok.col, f"{raw!r} compares only upvotes and authors",
                               "write upvotes>=10 or authors<=5; quote text to search "
                               "for it")  # fmt: skip
            raise self.err(tok.col, f"{raw!r} has no letters or digits to search for",
                           'quote it with other words or remove it')  # fmt: skip
        if len(toks) == 2 and raw[toks[0].end : toks[1].start] == "-":
            # fine-tuning: the phrase "fine tuning" or the word finetuning
            one = textmod.joined(raw[toks[0].start : toks[0].end], raw[toks[1].start :])
            if one:
                return _or([_leaf(toks, fld), Node("t", fld, textmod.stem(one))])
        if len(toks) == 1 and (split := _prefix_split(toks[0].norm)) is not None:
            # finetuning: the word, or the phrase "fine tuning" (fine-tuning is indexed joined)
            phrase = tuple(textmod.stem(w) for w in split)
            return _or([_leaf(toks, fld), Node("p", fld, phrase)])
        return _leaf(toks, fld)


def _combine(text: str, alts: list[tuple[Node, int]]) -> Node:
    """Alternatives joined: any positive one matches, and an alternative made only of
    exclusions excludes from all of them - at the top level and inside parentheses alike."""
    positives: list[Node] = []
    exclusions: list[Node] = []
    for node, _col in alts:
        conj = node.children if node.kind == "and" else (node,)
        if all(c.kind == "not" for c in conj):
            exclusions.extend(conj)
        else:
            positives.append(node)
    if not positives:
        raise _err(text, alts[0][1], "the query only excludes",
                   "add what to match, e.g. latency, -diffusion")  # fmt: skip
    root = _or(positives)
    return _and([root, *exclusions]) if exclusions else root


# Words a plain alternative ignores (outside quotes): they carry no topic. Lower-case "and",
# "or" and "not" are among them; the operators are AND, OR and NOT in capitals.
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "not",
        "the",
        "to",
        "with",
        "without",
        "via",
        "using",
        "towards",
        "toward",
        "based",
        "our",
        "we",
        "this",
        "that",
        "these",
        "their",
        "can",
    ]
)
# Word beginnings that make compounds written joined, hyphenated or apart (finetuning,
# fine-tuning, fine tuning): a query word starting with one also finds the words apart, and two
# words whose first is one also find them joined. Hyphenated words meet their joined form
# whatever they are (the index holds fine-tuning as finetuning too). Left out: beginnings
# that mostly start other words (super: supervised, under: understanding, over: overall).
COMPOUND_PREFIXES = frozenset(
    ["pre", "post", "multi", "fine", "self", "semi", "non", "cross", "inter", "intra", "meta",
     "sub", "hyper", "zero", "few", "mid", "anti"]
)  # fmt: skip


def _prefix_split(norm: str) -> tuple[str, str] | None:
    """A letters-only word as (compound prefix, rest of 3+ letters), or None."""
    if not norm.isalpha() or len(norm) < 6:
        return None
    for k in range(2, 6):
        if norm[:k] in COMPOUND_PREFIXES and len(norm) - k >= 3:
            return norm[:k], norm[k:]
    return None


# A plain alternative of this many words or more forgives missing words (see _loose).
LOOSE_FROM = 3
# The share of a forgiving alternative's word weight (BM25 idf in the papers matched against)
# the words a paper holds must carry: the words it lacks may not outweigh the ones it has.
MOST_SHARE = 1 / 2


def most_needed(n: int) -> int:
    """How many of a forgiving alternative's n words a paper needs: ceil(2n/3) up to 8 words
    (2 of 3, 3 of 4, 4 of 5 or 6), n - 2 past 8."""
    return -(-2 * n // 3) if n <= 8 else n - 2


def _is_stop(raw: str) -> bool:
    return raw.casefold() in STOP_WORDS


def _loose(parts: list[Node]) -> Node:
    """n plain words, n >= LOOSE_FROM: an `m` node. A paper matches with most of the words
    (most_needed) when those it holds carry at least MOST_SHARE of the words' total idf, so a
    rare, specific word cannot be left out for two common ones (`spiking neural networks`
    needs *spiking*); BM25 ranks the papers with more (and rarer) words first."""
    words = list(dict.fromkeys(parts))
    if len(words) < LOOSE_FROM:
        return _and(words)
    return Node("m", None, frozenset(words))


# A cycle's queries share most of their words: each word or phrase is tokenised once.
@functools.lru_cache(maxsize=1 << 16)
def _tokens(raw: str) -> tuple[textmod.Token, ...]:
    return tuple(textmod.tokenize(raw))


def _leaf(toks: Sequence[textmod.Token], fld: str | None) -> Node:
    if len(toks) == 1:
        return Node("t", fld, toks[0].stem)
    return Node("p", fld, tuple(t.stem for t in toks))


def _with_field(node: Node, fld: str) -> Node:
    if node.kind in ("t", "p", "x"):
        return Node(node.kind, fld, node.arg)
    if node.kind == "not":
        return Node("not", None, _with_field(node.child, fld))
    if node.kind in ("and", "or", "m"):
        return Node(node.kind, None, frozenset(_with_field(c, fld) for c in node.children))
    return node


def positive_terms(node: Node) -> tuple[Node, ...]:
    """The word, phrase and prefix leaves that count in favour of a match (not under a NOT)."""
    out: dict[Node, None] = {}

    def walk(n: Node, positive: bool) -> None:
        if n.kind in ("t", "p", "x"):
            if positive:
                out[n] = None
        elif n.kind == "not":
            walk(n.child, not positive)
        elif n.kind in ("and", "or", "m"):
            for c in sorted(n.children, key=repr):
                walk(c, positive)

    walk(node, True)
    return tuple(out)


def flatten(
    root: Node,
) -> tuple[tuple[Node, ...], tuple[bool, ...], tuple[int, ...], tuple[int, ...]]:
    """The root as AND of clauses, each an OR of conjunctions of (possibly negated) literals.

    Returns the literals in order, their negation flags, the literal count of each conjunction
    and the conjunction count of each clause. Anything deeper (a parenthesised group inside an
    alternative) stays one literal, evaluated as a whole.
    """
    lits: list[Node] = []
    negs: list[bool] = []
    conj_sizes: list[int] = []
    clause_sizes: list[int] = []

    def conj(node: Node) -> None:
        items = node.children if node.kind == "and" else (node,)
        for c in items:
            neg = c.kind == "not"
            lits.append(c.child if neg else c)
            negs.append(neg)
        conj_sizes.append(len(items))

    for clause in root.children if root.kind == "and" else (root,):
        alts = clause.children if clause.kind == "or" else (clause,)
        for alt in alts:
            conj(alt)
        clause_sizes.append(len(alts))
    return tuple(lits), tuple(negs), tuple(conj_sizes), tuple(clause_sizes)


def _parse(text: str) -> Node:
    """The root of a query (the full parser)."""
    parser = _Parser(text, _lex(text))
    alts = parser.alternatives(0)
    tok = parser.peek()
    if tok is not None:  # only a stray ")" stops the top level early
        raise parser.err(tok.col, "unbalanced parenthesis", "remove this ) or add a (")
    if not alts:
        raise _err(text, 1, "empty query", "write some words, e.g. sparse attention, latency")
    return _combine(text, alts)


_TOP_SEP = re.compile(r"[,\n]")


@functools.lru_cache(maxsize=1 << 16)
def _alternative(alt: str) -> Node | None:
    """One top-level alternative parsed on its own (None: let the full parser say why not)."""
    parser = _Parser(alt, _lex(alt))
    node = parser.or_expr(0)
    return node if parser.peek() is None else None


def _parse_fast(text: str) -> Node | None:
    """The root as the full parser builds it, from the top-level alternatives parsed one by one
    and cached (queries of a cycle share many); None where that could differ: groups, curly
    quotes, a comma or newline inside quotes, an empty alternative, any error."""
    if "(" in text or ")" in text or "“" in text or "”" in text:
        return None
    if '"' in text:
        quoted = text.split('"')
        if len(quoted) % 2 == 0 or any(("," in q or "\n" in q) for q in quoted[1::2]):
            return None
    alts = []
    try:
        for piece in _TOP_SEP.split(text):
            alt = piece.strip(" \t\r")
            node = _alternative(alt) if alt else None
            if node is None:
                return None
            alts.append((node, 1))
        return _combine(text, alts)
    except QueryError:
        return None


def _compile(text: str) -> Query:
    root = _parse_fast(text) or _parse(text)
    terms = positive_terms(root)
    lits, negs, conj_sizes, clause_sizes = flatten(root)
    codes = [leaf_id(x) << 1 | n for x, n in zip(lits, negs, strict=True)]
    packed = _program(list(map(leaf_id, terms)), codes, conj_sizes, clause_sizes)
    return Query(text, root, terms, lits, negs, conj_sizes, clause_sizes, packed)


def _program(
    term_ids: list[int], codes: list[int], conj_sizes: Sequence[int], clause_sizes: Sequence[int]
) -> bytes:
    """Query.program from the terms' leaf ids and the literals' codes (id << 1 | negated)."""
    program = [len(term_ids), *term_ids, len(clause_sizes)]
    if len(conj_sizes) == len(codes):  # every conjunction a single literal: no slicing
        k = 0
        for nconj in clause_sizes:
            program.append(nconj)
            for code in codes[k : k + nconj]:
                program += (1, code)
            k += nconj
    else:
        it = iter(codes)
        conjs = iter(conj_sizes)
        for nconj in clause_sizes:
            program.append(nconj)
            for _ in range(nconj):
                nlits = next(conjs)
                program.append(nlits)
                program.extend(itertools.islice(it, nlits))
    return array.array("q", program).tobytes()


# ---------------------------------------------------------------- the stored compiled form
#
# A topic's compiled query is kept with the topic when it is saved (topics.compiled), so a
# fresh process does not parse every distinct query again (~80 µs each). A cycle decodes its
# ~100k distinct forms as one batch, in numpy: the forms are joined, their headers, texts,
# programs and key hashes read as arrays, and only the keys the process has not met yet are
# unmarshalled, each once; what is left per query is making its Query.
#
# Layout (little-endian, the whole a multiple of 8 bytes so every array is aligned):
#   FORM_KEY (4) | keys, program words, text bytes, key bytes, tree bytes (5 x u32)
#   | a stable 64-bit hash per key (u64 each, see _key_hash)
#   | the program template (i32 each; each leaf id blank, -1, filled in order when decoded)
#   | per key how its code is made of the leaf id (u8: 0 a term, the id; 2 a literal, id << 1;
#     3 a negated literal, id << 1 | 1)
#   | the query text (UTF-8) | the keys (a marshal, read only for the keys new to a process)
#   | the tree (a marshal, read only when asked for: Query._parts)
#   | zeros to the next multiple of 8, less 4 | the CRC-32 of all before (u32)
# marshal is not safe on damaged bytes (a flipped byte can make a tuple that holds itself,
# whose hash overflows the C stack), so no form is read before its CRC matches; anything that
# does not decode to a form of this compiler for this very text is None, and the caller
# compiles the text afresh. A hash stands for its key in the whole process (the first form
# that brings it names the key, and must hash to it): two distinct keys with one hash would
# share a leaf, at 64 bits ~3e-10 for 100k distinct keys.

# Bump when the layout of a form changes.
FORM_VERSION = 4


def _compiler_source() -> bytes:
    """The source of what decides a query's compiled form (this parser, and text.py's
    tokenising, normalising and stemming): any edit of either makes every stored form stale,
    so no hand-kept version number can be forgotten (a form is then compiled and rewritten)."""
    out = b""
    for module in (__file__, textmod.__file__):
        try:
            with open(module, "rb") as f:
                out += f.read()
        except OSError:  # no source next to the bytecode: the versions below still key it
            out += module.encode()
    return out


# Also keyed by what else decides the stems and the marshal layout, so an upgrade of PyStemmer,
# of Unicode's tables (NFKC, casefolding) or of Python makes the forms stale by itself.
FORM_KEY = hashlib.blake2b(
    f"{FORM_VERSION}|{textmod.STEMMER_VERSION}|{unicodedata.unidata_version}|"
    f"{sys.version_info[0]}.{sys.version_info[1]}|{marshal.version}".encode()
    + _compiler_source(),
    digest_size=4,
).digest()
_GROUP_KINDS = frozenset(("and", "or", "m"))
_HEAD = struct.Struct("<4s5I")  # FORM_KEY; keys, program words, text, key and tree bytes
_RESIDUE = 0x2144DF1C  # zlib.crc32 of any bytes followed by their own CRC-32, little-endian
_utf8 = functools.partial(str.encode, encoding="utf-8", errors="surrogatepass")


class FormLayers(NamedTuple):
    """A stored form's layers, as encode_query writes them and assemble_form seals them."""

    hashes: bytes  # u64 per key
    template: bytes  # i32 per program word
    flags: bytes  # u8 per key
    text: bytes  # UTF-8
    keys: bytes  # marshal of the keys (see _key), read for the keys new to a process
    tree: bytes  # marshal of (table, root, terms, literals, conj_sizes, clause_sizes)


def assemble_form(layers: FormLayers) -> bytes:
    """The stored form of these layers: header, layers, padding and CRC (see the layout)."""
    head = _HEAD.pack(FORM_KEY, len(layers.flags), len(layers.template) // 4,
                      len(layers.text), len(layers.keys), len(layers.tree))  # fmt: skip
    body = b"".join((head, *layers))
    body += bytes(-(len(body) + 4) % 8)
    return body + zlib.crc32(body).to_bytes(4, "little")


def form_layers(form: bytes | None) -> FormLayers | None:
    """A stored form's layers when it is a sound form of this compiler (None: missing, stale,
    damaged)."""
    if not form or len(form) < _HEAD.size + 8 or len(form) & 7:
        return None
    if zlib.crc32(form) != _RESIDUE:
        return None
    key, nkeys, nprog, ntext, nkeyset, ntree = _HEAD.unpack_from(form)
    sizes = (8 * nkeys, 4 * nprog, nkeys, ntext, nkeyset, ntree)
    ends = list(itertools.accumulate(sizes, initial=_HEAD.size))
    if key != FORM_KEY or not 0 <= len(form) - 4 - ends[-1] < 8:
        return None
    return FormLayers(*(bytes(form[a:b]) for a, b in itertools.pairwise(ends)))


def _form_text(form: bytes) -> str | None:
    """The query text a stored form was written for (None: not a readable form)."""
    layers = form_layers(form)
    if layers is None:
        return None
    try:
        return layers.text.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def _key(node: Node) -> object:
    """A node as plain marshal-able values, equal for equal nodes whatever the query: a plain
    word as its string, a group as (kind, frozenset of its children's keys), a negation as
    ("not", key), any other leaf as its (kind, field, arg) tuple (which equals its Node)."""
    if node.kind in _GROUP_KINDS:
        return (node.kind, frozenset(map(_key, node.children)))
    if node.kind == "not":
        return ("not", _key(node.child))
    if node.kind == "t" and node.field is None:
        return node.word
    return tuple(node)


def _canonical(key: Any) -> str:
    """A key as text that is the same in every process (a frozenset's order is not)."""
    if key.__class__ is tuple:
        return "(" + ",".join(map(_canonical, key)) + ")"
    if key.__class__ is frozenset:
        return "{" + ",".join(sorted(map(_canonical, key))) + "}"
    return repr(key)


def _key_hash(key: object) -> int:
    """A key's stable 64-bit hash, as its form stores it."""
    text = repr(key) if key.__class__ is str else _canonical(key)
    digest = hashlib.blake2b(_utf8(text), digest_size=8).digest()
    return int.from_bytes(digest, "little")


_new_tuple = tuple.__new__


def _node_of(key: Any) -> Node:
    """The Node a _key stands for."""
    if key.__class__ is str:
        return _new_tuple(Node, ("t", None, key))  # Node's own __new__ is a Python call
    if len(key) == 3:
        return _new_tuple(Node, key)
    if key[0] == "not":
        return _new_tuple(Node, ("not", None, _node_of(key[1])))
    return _new_tuple(Node, (key[0], None, frozenset(map(_node_of, key[1]))))


def encode_query(query: Query) -> bytes:
    """The query's stored form (see the layout above): what the batch matcher reads (its keys'
    hashes, its program with each leaf id left blank, how each blank is filled) and the tree
    (its nodes as a table of plain tuples, children by position), read only when asked for."""
    table: list[object] = []
    at: dict[Node, int] = {}

    def ref(node: Node) -> int:
        got = at.get(node)
        if got is None:
            # a plain word as its string, a group as (kind, child positions...), any other
            # leaf as its (kind, field, arg) tuple: the fewest objects for marshal to build
            entry: object
            if node.kind in _GROUP_KINDS:
                entry = (node.kind, *(ref(c) for c in node.children))
            elif node.kind == "not":
                entry = ("not", ref(node.child))
            elif node.kind == "t" and node.field is None:
                entry = node.word
            else:
                entry = tuple(node)
            got = at[node] = len(table)
            table.append(entry)
        return got

    root = ref(query.root)
    terms = tuple(map(ref, query.terms))
    lits = tuple(ref(x) << 1 | n for x, n in zip(query.literals, query.negated, strict=True))
    # the blanks' keys in order: the terms' ids, then the literals' codes, as _program writes
    keys = (*map(_key, query.terms), *map(_key, query.literals))
    tree = marshal.dumps(
        cast(Any, (tuple(table), root, terms, lits, query.conj_sizes, query.clause_sizes)), 4
    )
    # the program's leaf ids are the process's own (leaf_id): blanks
    program = list(array.array("q", query.program))
    program[1 : 1 + len(query.terms)] = [-1] * len(query.terms)
    pos = 2 + len(query.terms)
    for nconj in query.clause_sizes:
        pos += 1
        for _ in range(nconj):
            nlits = program[pos]
            program[pos + 1 : pos + 1 + nlits] = [-1] * nlits
            pos += 1 + nlits
    return assemble_form(FormLayers(
        hashes=struct.pack(f"<{len(keys)}Q", *map(_key_hash, keys)),
        template=struct.pack(f"<{len(program)}i", *program),
        flags=bytes([0] * len(query.terms) + [2 | n for n in query.negated]),
        text=_utf8(query.text),
        keys=marshal.dumps(cast(Any, keys), 4),
        tree=tree,
    ))  # fmt: skip


def decode_query(text: str, form: bytes | None) -> Query | None:
    """The Query a stored form holds, equal to compile_query(text); None when the form is
    missing, of another compiler (FORM_KEY) or another text, or damaged."""
    return decode_queries([text], [form])[0]


class _Unsound(Exception):
    """A form of the batch whose sound CRC hides an unsound body (a buggy writer's)."""


def decode_queries(texts: Sequence[str], forms: Sequence[bytes | None]) -> list[Query | None]:
    """decode_query for a batch (a cycle's distinct queries), as arrays: every check, the key
    lookups and the programs done for the whole batch at once (see the layout above)."""
    import numpy as np  # the matcher's dependency; loaded by it before any batch

    n = len(texts)
    out: list[Query | None] = [None] * n
    fs = [f if f.__class__ is bytes else bytes(f or b"") for f in forms]
    lens = np.fromiter(map(len, fs), np.int64, n)
    sound = (np.fromiter(map(zlib.crc32, fs), np.int64, n) == _RESIDUE) & (lens & 7 == 0)
    sound &= lens >= _HEAD.size + 8
    pick = np.flatnonzero(sound)
    if not len(pick):
        return out
    buf = b"".join(itertools.compress(fs, sound.tolist()))
    try:
        return _decode_batch(texts, fs, out, buf, pick, lens[pick], np)
    except _Unsound:  # find the unsound form by halves: it fails alone, the rest decode
        if n == 1:
            return out
        half = n // 2
        head = decode_queries(texts[:half], forms[:half])
        return head + decode_queries(texts[half:], forms[half:])


def _decode_batch(texts: Sequence[str], fs: list[bytes], out: list[Query | None], buf: bytes,
                  pick: Any, lens: Any, np: Any) -> list[Query | None]:  # fmt: skip
    """decode_queries for the sound forms joined in buf (pick: their positions in texts)."""
    from digest.arrays import owners, ranges

    starts = np.cumsum(lens) - lens
    head = np.frombuffer(buf, "<u4")[(starts >> 2)[:, None] + np.arange(6)].astype(np.int64)
    nkeys, nprog, ntext, nkeyset, ntree = head[:, 1:].T
    at_text = starts + _HEAD.size + 9 * nkeys + 4 * nprog
    spare = lens - 4 - (at_text + ntext + nkeyset + ntree - starts)
    try:  # the texts as stored (a lone surrogate, which no database returns, is kept as is)
        encoded = list(map(str.encode, [texts[k] for k in pick.tolist()]))
    except UnicodeEncodeError:
        encoded = list(map(_utf8, [texts[k] for k in pick.tolist()]))
    good = (head[:, 0] == int.from_bytes(FORM_KEY, "little")) & (spare >= 0) & (spare < 8)
    good &= (ntext > 0) & (nprog >= 2)  # an empty query has no form; a program, two counts
    good &= np.fromiter(map(len, encoded), np.int64, len(encoded)) == ntext
    u1 = np.frombuffer(buf, np.uint8)
    while True:  # the header's sizes, then what they frame: each form fails alone
        if not good.all():
            keep = np.flatnonzero(good)
            pick, starts, nkeys, nprog, ntext, nkeyset, at_text = (
                a[keep] for a in (pick, starts, nkeys, nprog, ntext, nkeyset, at_text)
            )
            encoded = [encoded[k] for k in keep.tolist()]
            if not len(pick):
                return out
        m = len(pick)
        differ = u1[ranges(at_text, ntext)] != np.frombuffer(b"".join(encoded), np.uint8)
        good = np.bincount(owners(ntext)[differ], minlength=m) == 0  # a form of another text
        tmpl = np.frombuffer(buf, "<i4")[ranges((starts + _HEAD.size + 8 * nkeys) >> 2, nprog)]
        holes = tmpl == -1
        good &= np.bincount(owners(nprog)[holes], minlength=m) == nkeys
        how = u1[ranges(at_text - nkeys, nkeys)].astype(np.int64)
        good &= np.bincount(owners(nkeys)[(how == 1) | (how > 3)], minlength=m) == 0
        if good.all():
            break
    # every distinct key of the batch looked up once; those new to the process read from the
    # first form that holds each
    hashes = np.frombuffer(buf, "<u8")[ranges((starts + _HEAD.size) >> 3, nkeys)]
    distinct, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    distinct_hashes = distinct.tolist()
    ids = list(map(_HASH_IDS.get, distinct_hashes))
    if None in ids:
        unknown = [j for j, x in enumerate(ids) if x is None]
        key_starts = np.cumsum(nkeys) - nkeys
        holder = np.searchsorted(key_starts, first[unknown], "right") - 1
        slots = (first[unknown] - key_starts[holder]).tolist()
        keys_at = (at_text + ntext).tolist()
        nkeys_of, keyset_of = nkeys.tolist(), nkeyset.tolist()
        read: dict[int, tuple] = {}
        found = []
        try:
            for f, slot in zip(holder.tolist(), slots, strict=True):
                keys = read.get(f)
                if keys is None:
                    keys = read[f] = marshal.loads(buf[keys_at[f] : keys_at[f] + keyset_of[f]])
                    if keys.__class__ is not tuple or len(keys) != nkeys_of[f]:
                        raise ValueError("keys")
                found.append(keys[slot])
            made = _form_ids(found, [distinct_hashes[j] for j in unknown])
            for j, got in zip(unknown, made, strict=True):
                ids[j] = got
        except Exception as exc:
            raise _Unsound from exc
    ids_of = np.asarray(ids, np.int64)[inverse.ravel()]
    filled = tmpl.astype(np.int64)
    filled[holes] = ids_of << (how >> 1) | how & 1
    programs = filled.tobytes()
    new = object.__new__
    begin = 0
    for k, end in zip(pick.tolist(), (8 * np.cumsum(nprog)).tolist(), strict=True):
        # the slots' setters: Query's own __init__ would build the tree this defers; the tree
        # is read from the whole form when asked for
        q = out[k] = new(Query)
        _SET_TEXT(q, texts[k])
        _SET_PROGRAM(q, programs[begin:end])
        _SET_TREE(q, fs[k])
        begin = end
    return out


def _form_ids(keys: list[object], hashes: list[int]) -> list[int]:
    """The process's leaf ids of keys new to it met in forms, each made a leaf when new and
    kept under its hash (a plain word's also in _WORD_IDS, for the trees of the forms that hold
    it). A key that is not its hash's raises: it would stand for that hash in every form."""
    out = []
    with _LEAF_LOCK:  # once for the batch (leaf_id's own lock per key cost a third of it);
        # the maps are written under it, so forget_leaves cannot clear LEAVES in between
        for key, want in zip(keys, hashes, strict=True):
            if _key_hash(key) != want:
                raise ValueError("a key that is not its hash's")
            node = _node_of(key)
            got = _LEAF_IDS.get(node)
            if got is None:
                LEAVES.append(node)
                got = _LEAF_IDS[node] = len(LEAVES) - 1
            if key.__class__ is str:
                _WORD_IDS[key] = got
            _HASH_IDS[want] = got
            out.append(got)
    return out


def _decode_tree(form: bytes) -> tuple[Node, tuple, tuple, tuple, tuple, tuple]:
    """A form's tree: (root, terms, literals, negated, conj_sizes, clause_sizes), leaves shared
    with the process's own (LEAVES) where the forms' keys met them."""
    layers = form_layers(form)
    assert layers is not None
    table, root, terms, lits, conj_sizes, clause_sizes = marshal.loads(layers.tree)
    words, leaves = _WORD_IDS, _LEAF_IDS
    nodes: list[Node] = []
    for entry in table:
        if entry.__class__ is str:
            got = words.get(entry)
            nodes.append(LEAVES[got] if got is not None else Node("t", None, entry))
        elif entry[0] in _GROUP_KINDS:
            kids = frozenset([nodes[c] for c in entry[1:]])
            nodes.append(_new_tuple(Node, (entry[0], None, kids)))
        elif entry[0] == "not":
            nodes.append(_new_tuple(Node, ("not", None, nodes[entry[1]])))
        else:  # a leaf's (kind, field, arg) tuple equals its Node, and hashes the same
            got = leaves.get(entry)
            nodes.append(LEAVES[got] if got is not None else Node(*entry))
    return (nodes[root], tuple([nodes[c] for c in terms]), tuple([nodes[c >> 1] for c in lits]),
            tuple([c & 1 == 1 for c in lits]), conj_sizes, clause_sizes)  # fmt: skip


# a plain word met in a form -> the process's leaf id; a key's stable hash -> the same: both
# cleared with LEAVES (forget_leaves)
_WORD_IDS: dict[str, int] = {}
_HASH_IDS: dict[int, int] = {}


def compiled_form(text: str) -> bytes | None:
    """The stored form of a topic's query (None: an empty or invalid query, nothing to keep)."""
    if not text.strip():
        return None
    try:
        return encode_query(compile_query(text))
    except QueryError:
        return None


def form_is_current(text: str, form: bytes | None) -> bool:
    """Whether a stored form is of this compiler and this text (an empty query needs none)."""
    if not text.strip():
        return form is None
    return form is not None and _form_text(form) == text


# Leaf ids, process-wide: the matcher numbers a batch's leaves by these instead of hashing
# Node tuples (that hashing was the largest Python cost of a 100k-query batch). Bounded by the
# distinct words, phrases and filters ever compiled in the process, not by the queries.
_LEAF_IDS: dict[Node, int] = {}
LEAVES: list[Node] = []
_LEAF_LOCK = threading.Lock()  # web threads compile queries concurrently


# Caches of compiled queries above this module (the matcher's): cleared by forget_leaves.
_HOLDERS: list[Callable[[], None]] = []


def on_forget_leaves(clear: Callable[[], None]) -> None:
    """Have forget_leaves call `clear`: a cache of Query objects, whose programs name leaves by
    the ids forget_leaves gives away again."""
    _HOLDERS.append(clear)


def forget_leaves() -> None:
    """Forget every leaf id this process gave (benchmarks: a fresh process's state), and every
    cached query that holds them (compile_query's, on_forget_leaves' holders). A caller's own
    Query objects compiled or decoded before are stale: drop those too."""
    with _LEAF_LOCK:
        _LEAF_IDS.clear()
        LEAVES.clear()
        _WORD_IDS.clear()
        _HASH_IDS.clear()
        compile_query.cache_clear()
        for clear in _HOLDERS:
            clear()


def leaf_id(node: Node) -> int:
    """The process-wide id of a literal or word node (LEAVES[id] is the node)."""
    got = _LEAF_IDS.get(node)
    if got is None:
        with _LEAF_LOCK:
            got = _LEAF_IDS.get(node)
            if got is None:
                LEAVES.append(node)
                got = _LEAF_IDS[node] = len(LEAVES) - 1
    return got


# Big enough for one chunk of the scheduler's queue_digests (10k subscribers, each query compiled
# twice there); at 1 << 18 the cache kept ~100 MB of compiled queries alive at 100k subscribers.
@functools.lru_cache(maxsize=1 << 14)
def compile_query(text: str) -> Query:
    """Parse a topic query into its compiled form; raise QueryError with column and hint."""
    return _compile(text)


def query_warnings(text: str) -> list[str]:
    """What in a valid query is probably a mistake: lower-case or/and/not (ignored as stop words),
    and an OR whose side is a negation (it matches nearly every paper)."""
    out: list[str] = []
    try:
        toks = _lex(text)
    except QueryError:
        return out
    for k, tok in enumerate(toks):
        if tok.kind == "word" and str(tok.value) in ("or", "and", "not"):
            op = str(tok.value).upper()
            also = " or a comma" if op == "OR" else ""
            out.append(f"column {tok.col}: lower-case {tok.value!r} is ignored as a common "
                       f"word; write {op} for the operator{also}")  # fmt: skip
        if tok.kind == "OR":
            before = toks[k - 1] if k else None
            after = toks[k + 1] if k + 1 < len(toks) else None
            if (after is not None and after.kind in ("NOT", "-")) or (
                before is not None
                and before.kind in ("word", "phrase")
                and k >= 2
                and toks[k - 2].kind in ("NOT", "-")
            ):
                out.append(f"column {tok.col}: OR with a negation matches almost every paper; "
                           "to exclude, write a, -b (an exclusion of its own)")  # fmt: skip
    return out


def coverage_warning(hits: int, total: int) -> str | None:
    """A warning when a topic matches nothing or almost everything of `total` stored papers."""
    if total >= 20 and hits == 0:
        return f"matches none of the {total} stored papers"
    if total >= 20 and hits > total // 2:
        return f"matches {hits} of the {total} stored papers: almost everything"
    return None
