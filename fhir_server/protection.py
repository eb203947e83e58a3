"""Identifying index values, stored as keyed tokens instead of text (GDPR Art. 32, O.Data_1).

Reference: compliance.md §3 "Encryption at rest"; FHIR string, token and text search
(https://hl7.org/fhir/R4/search.html#string, #token, #text); the blind index itself is
``compliance.blind_index`` (its docstring states the leakage accepted).

Which index rows identify a person (:func:`protected`):

- every string parameter of Patient, RelatedPerson, Person and Practitioner (names, addresses,
  their parts, phonetic);
- their token parameters ``identifier`` (KVNR …), ``telecom``, ``phone`` and ``email``, with
  ``identifier:of-type`` (the identifier's value is that row's text);
- ``<reference>:identifier`` rows of every type (a logical reference by KVNR);
- ``_text`` and ``_content`` of every type (narratives and free text name people).

How they are stored (:meth:`Protection.rows`), with the token context ``<type>.<parameter>``
(equal values of different parameters or types give unrelated tokens):

- string: one row per word prefix token (``name=Mül`` looks up the token of "mul"), plus one
  row with the equality token of the value as written (``:exact``); the ``exact`` column is empty;
- token: the code (identifier value, phone number, address) becomes its equality token; the
  system stays in clear (a code system URI identifies nobody), so ``system|value``, ``value``,
  ``|value`` and ``system|`` keep their meaning;
- text: one row per parameter, `` <version>. <t1> <t2> … ``: the distinct word tokens, sorted
  (word order is not kept), searched per query word as `` <t> ``. Word tokens are 8 bytes
  (11 characters, the key version once per row): a search scans these rows as it scanned the
  plain text (no value index, as before), so their length is its cost. 64 bits leave a chance of
  about 10^-8 that two of a million distinct words share a token (a false match, never a miss).

Date, number and quantity rows stay in clear: range searches need their order, and without the
protected rows above and the encrypted payload they link to no identity (a value without a name).

Semantics that change against plain rows (search.html allows servers their own string matching
only in part, so these are stated in the CapabilityStatement-facing errors and the report):
a string search matches when every query word is the start of some word of some value of the
parameter (words longer than 12 characters compare by their first 12); ``:contains`` and
``_sort`` on these parameters are refused (400); ``_text``/``_content`` match whole words.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final, Protocol

from compliance.blind_index import BlindIndex, PrefixQuery, words
from compliance.keyring import Keyring
from fhir_server.search.rows import IndexRows, StringRow, TextRow, TokenRow

__all__ = [
    "PERSON_TYPES",
    "Protection",
    "SearchTokens",
    "context",
    "protected",
    "token_prefix",
]

PERSON_TYPES: Final = frozenset({"Patient", "RelatedPerson", "Person", "Practitioner"})
_PERSON_TOKENS: Final = frozenset({"identifier", "telecom", "phone", "email"})
_OF_TYPE: Final = ":of-type"
# Word tokens of one text row are looked up as " <token> " (stored with a space on either side).
_SEPARATOR: Final = " "
_WORD_TOKEN_BYTES: Final = 8
_CACHE_MAX: Final = 65_536


def protected(type: str, param: str, kind: str) -> bool:
    """Whether the index rows of ``param`` (of search ``kind``) of ``type`` hold tokens."""
    if kind == "text":
        return True
    if kind == "string":
        return type in PERSON_TYPES and "$" not in param
    if kind == "token":
        base, _, modifier = param.partition(":")
        if modifier == "identifier":
            return True
        return type in PERSON_TYPES and base in _PERSON_TOKENS
    return False


def context(type: str, param: str) -> str:
    """The blind-index context of a parameter: ``identifier:of-type`` shares ``identifier``'s."""
    return f"{type}.{param.removesuffix(_OF_TYPE)}"


def token_prefix(version: int) -> str:
    """How every token under master key ``version`` begins (``compliance.blind_index``)."""
    return f"{version}."


class SearchTokens(Protocol):
    """The tokens a search looks up; every key version in the keyring gives one alternative."""

    def prefix_search(self, context: str, text: str) -> PrefixQuery:
        """Per word of ``text``: its prefix tokens; ValueError if ``text`` has no word."""
        ...

    def equality_search(self, context: str, value: str) -> tuple[str, ...]: ...

    def word_search(self, context: str, text: str) -> list[tuple[str, ...]]:
        """Per word of ``text``: its word tokens (a text without words gives none)."""
        ...


class Protection:
    """Turns identifying index rows into blind-index tokens, and search values likewise."""

    __slots__ = ("_blind", "_text_blind", "_words", "current_version")

    def __init__(self, keyring: Keyring) -> None:
        self._blind = BlindIndex(keyring)
        self._text_blind = BlindIndex(keyring, token_bytes=_WORD_TOKEN_BYTES)
        self.current_version = keyring.current_version
        self._words: dict[tuple[str, str], str] = {}

    # -- rows written ---------------------------------------------------------------------------

    def rows(self, type: str, rows: IndexRows) -> IndexRows:
        """``rows`` with every protected value replaced by its tokens."""
        strings, tokens = rows.strings, rows.tokens
        if type in PERSON_TYPES and strings:
            strings = self._strings(type, strings)
        if any(protected(type, row.param, "token") for row in tokens):
            tokens = tuple(self._token(type, row) for row in tokens)
        texts = tuple(self._text(type, row) for row in rows.texts)
        return replace(rows, strings=strings, tokens=tokens, texts=texts)

    def _strings(self, type: str, rows: Iterable[StringRow]) -> tuple[StringRow, ...]:
        out: dict[StringRow, None] = {}
        for row in rows:
            if not protected(type, row.param, "string"):
                out[row] = None
                continue
            where = context(type, row.param)
            for token in self._blind.prefix_tokens(where, row.value):
                out[StringRow(row.param, token, "", row.grp)] = None
            exact = self._blind.equality_token(where, row.exact)
            out[StringRow(row.param, exact, "", row.grp)] = None
        return tuple(out)

    def _token(self, type: str, row: TokenRow) -> TokenRow:
        if not protected(type, row.param, "token"):
            return row
        where = context(type, row.param)
        if row.param.endswith(_OF_TYPE):  # the identifier's value is the text
            text = row.text and self._blind.equality_token(where, row.text)
            return TokenRow(row.param, row.system, row.code, text, row.grp)
        code = row.code and self._blind.equality_token(where, row.code)
        return TokenRow(row.param, row.system, code, row.text, row.grp)

    def _text(self, type: str, row: TextRow) -> TextRow:
        where, cache = context(type, row.param), self._words
        tokens = []
        for word in set(words(row.value)):
            token = cache.get((where, word))
            tokens.append(token if token is not None else self._word(where, word))
        tokens.sort()
        head = _SEPARATOR + token_prefix(self.current_version) + _SEPARATOR
        return TextRow(row.param, head + _SEPARATOR.join(tokens) + _SEPARATOR, row.grp)

    def _word(self, where: str, word: str) -> str:
        # Word tokens of free text repeat across resources ("final", "vital", "kg"): each is
        # computed once per process (the cache holds words of records, like the process does).
        if len(self._words) >= _CACHE_MAX:
            self._words.clear()
        token = self._text_blind.equality_token(where, word).partition(".")[2]
        self._words[(where, word)] = token
        return token

    # -- values searched (SearchTokens) ---------------------------------------------------------

    def prefix_search(self, context: str, text: str) -> PrefixQuery:
        return self._blind.prefix_search(context, text)

    def equality_search(self, context: str, value: str) -> tuple[str, ...]:
        return self._blind.equality_search(context, value)

    def word_search(self, context: str, text: str) -> list[tuple[str, ...]]:
        return [
            tuple(t.partition(".")[2] for t in self._text_blind.equality_search(context, word))
            for word in dict.fromkeys(words(text))
        ]
