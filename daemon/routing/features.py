"""Cheap request features for quality prediction (pure Python, no model downloads).

``request_features(text)`` turns the task text (the last user message / task
prompt) into a sparse vector ``{index: value}``:

* indices ``0 .. N_DENSE-1``: named hand-made features (``DENSE_NAMES``) — length
  buckets, code markers, math markers, question words, domain keyword groups;
* indices ``N_DENSE .. N_DENSE+N_HASH-1``: hashed word unigrams and bigrams
  (presence, L2-normalised), CRC32-based so buckets are stable across processes
  (Python's ``hash()`` is salted per process).

The layout is part of the trained artifact's contract: changing it needs a
``FEATURES_VERSION`` bump and retraining (``switchman train``).
"""

from __future__ import annotations

import math
import zlib

FEATURES_VERSION = 1
HASH_BITS = 12
N_HASH = 1 << HASH_BITS
_MASK = N_HASH - 1

# Only this much text is tokenised for hashed n-grams: agent prompts can be
# 100 KB and the head and tail carry the instruction; the dense counters below
# still see the whole text (str.count runs at C speed).
_HEAD_CHARS = 2048
_TAIL_CHARS = 1024

_DOMAINS: dict[str, tuple[str, ...]] = {
    "law": ("court", "statute", "plaintiff", "defendant", "contract", "legal", "law"),
    "health": ("patient", "disease", "clinical", "symptoms", "medical", "treatment"),
    "bio": ("cell", "cells", "protein", "gene", "species", "organism", "dna"),
    "chem": ("reaction", "molecule", "acid", "compound", "chemical", "mol", "solution"),
    "physics": ("velocity", "energy", "force", "mass", "electron", "quantum", "wave"),
    "econ": ("price", "market", "economy", "demand", "supply", "interest", "gdp"),
    "history": ("century", "war", "empire", "revolution", "ancient", "treaty"),
    "cs": ("algorithm", "array", "compile", "database", "runtime", "bug", "code"),
    "agentic": ("repository", "repo", "traceback", "test", "tests", "pr", "commit"),
}

DENSE_NAMES: tuple[str, ...] = (
    "bias_text",  # always 1: lets a head shift the level for any text
    "len_log",
    "len_gt_200",
    "len_gt_1000",
    "len_gt_4000",
    "lines_log",
    "code_fence",
    "code_kw",
    "code_punct",
    "indent",
    "digits_ratio",
    "math_ops",
    "latex",
    "numbers_log",
    "q_what",
    "q_why_how",
    "q_prove_derive",
    "q_write_implement",
    "q_calc",
    "q_choice",
    "q_explain",
    *(f"dom_{d}" for d in _DOMAINS),
)
N_DENSE = len(DENSE_NAMES)
N_FEATURES = N_DENSE + N_HASH


def _words(ws: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(w.encode() for w in ws)


# Word-level keyword groups: tested by set intersection with the prompt's word
# set (one C-level operation per group instead of a str.count per keyword).
_WORD_GROUPS: tuple[tuple[int, frozenset[bytes]], ...] = (
    (
        7,
        _words(
            (
                "def",
                "class",
                "import",
                "return",
                "function",
                "const",
                "include",
                "fn",
                "struct",
                "public",
                "void",
                "async",
                "await",
                "self",
                "var",
            )
        ),
    ),
    (14, _words(("what", "which", "who", "where", "when"))),
    (15, _words(("why", "how"))),
    (16, _words(("prove", "derive", "proof", "theorem", "lemma"))),
    (17, _words(("write", "implement", "create", "fix", "refactor", "add", "build"))),
    (18, _words(("calculate", "compute", "many", "much", "find", "total", "solve"))),
    (20, _words(("explain", "describe", "discuss", "compare", "summarize", "why"))),
    *((N_DENSE - len(_DOMAINS) + j, _words(keys)) for j, keys in enumerate(_DOMAINS.values())),
)
_CHOICE_MARKS = ("\na.", "\na)", "(a)", "options:", "\nb.", "\nb)")
_MATH_OPS = "+=^*/<>"
# Words are split on UTF-8 bytes: ``bytes.translate`` (ASCII punctuation ->
# space) and ``bytes.split`` stay on C fast paths for any text, whereas
# ``str.translate`` drops to a per-character slow path (2-3x the whole feature
# budget) as soon as the text holds one non-ASCII character. Non-ASCII letters
# stay inside words. Punctuation itself is covered by the dense counters.
_PUNCT_CHARS = b"!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~"
_PUNCT = bytes.maketrans(_PUNCT_CHARS, b" " * len(_PUNCT_CHARS))

# Word -> bucket cache: vocabularies repeat, and ``map(dict.get, words)`` runs
# at C speed; only unseen words pay for crc32. Bounded so odd inputs cannot
# grow it without limit.
_BUCKET: dict[bytes, int] = {}
_BUCKET_MAX = 200_000


def _bucket(word: bytes) -> int:
    b = N_DENSE + (zlib.crc32(word) & _MASK)
    if len(_BUCKET) < _BUCKET_MAX:
        _BUCKET[word] = b
    return b


def _sq(x: float, cap: float) -> float:
    """Saturating scale to [0, 1]: keeps every dense feature on one scale."""
    return x / (x + cap)


def request_features(text: str) -> dict[int, float]:
    """Sparse feature vector ``{index: value}`` of ``text``. Deterministic; no I/O.
    Hashed part: word unigrams (presence, L2-normalised) of the head/tail."""
    n = len(text)
    if n > _HEAD_CHARS + _TAIL_CHARS:
        text = text[:_HEAD_CHARS] + "\n" + text[-_TAIL_CHARS:]
    low = text.lower()
    m = len(text) or 1
    f: dict[int, float] = {0: 1.0, 1: math.log1p(n) / 10.0}
    if n > 200:
        f[2] = 1.0
    if n > 1000:
        f[3] = 1.0
    if n > 4000:
        f[4] = 1.0
    nl = text.count("\n")
    if nl:
        f[5] = math.log1p(nl) / 6.0
    if "```" in text:
        f[6] = 1.0
    punct = text.count("{") + text.count(";") + text.count("}")
    if punct:
        f[8] = _sq(punct, 5.0)
    ind = text.count("\n    ") + text.count("\n\t")
    if ind:
        f[9] = _sq(ind, 3.0)
    ops = sum(map(text.count, _MATH_OPS))
    if ops:
        f[11] = _sq(ops, 5.0)
    # LaTeX proxy: backslashes and dollar signs (2 scans; named macros cost 8)
    lat = text.count("\\") + text.count("$")
    if lat:
        f[12] = _sq(lat, 4.0)
    if any(k in low for k in _CHOICE_MARKS):
        f[19] = 1.0
    words = low.encode("utf-8", "ignore").translate(_PUNCT).split()
    numw = list(filter(bytes.isdigit, words))
    if numw:
        f[10] = min(1.0, 5.0 * sum(map(len, numw)) / m)
        f[13] = math.log1p(len(numw)) / 4.0
    uniq = set(words)
    for idx, group in _WORD_GROUPS:
        c = len(uniq & group)
        if c:
            f[idx] = f.get(idx, 0.0) + _sq(c, 2.0)
    if uniq:
        buckets = set(map(_BUCKET.get, uniq))  # C-level when all words are known
        if None in buckets:
            buckets.discard(None)
            buckets.update(_bucket(w) for w in uniq if w not in _BUCKET)
        v = 1.0 / math.sqrt(len(buckets))
        f.update(dict.fromkeys(buckets, v))
    return f
