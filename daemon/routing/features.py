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
import re
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
    "law": ("court", "statute", "plaintiff", "defendant", "contract", "legal", "law "),
    "health": ("patient", "disease", "clinical", "symptom", "medical", "treatment"),
    "bio": ("cell", "protein", "gene", "species", "organism", "dna"),
    "chem": ("reaction", "molecule", "acid", "compound", "chemical", "mol"),
    "physics": ("velocity", "energy", "force", "mass", "electron", "quantum", "wave"),
    "econ": ("price", "market", "economy", "demand", "supply", "interest rate", "gdp"),
    "history": ("century", "war", "empire", "revolution", "ancient", "treaty"),
    "cs": ("algorithm", "function", "array", "compile", "database", "runtime", "bug"),
    "agentic": ("refactor", "repository", "stack trace", "traceback", "unit test", "pull request"),
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
_IDX = {n: i for i, n in enumerate(DENSE_NAMES)}

_TOKEN_RE = re.compile(r"[a-z_][a-z0-9_]*|\d+|[{}();=<>+\-*/^\\$#]")
_NUM_RE = re.compile(r"\d+(?:\.\d+)?")
_CODE_KW = ("def ", "class ", "import ", "return ", "function ", "const ", "#include", "=>", "fn ")
_LATEX = ("\\frac", "\\sqrt", "\\sum", "\\int", "\\boxed", "$$", "\\(", "\\[")
_MATH_OPS = ("+", "=", "^", "*", "/", "<", ">")

# Token -> bucket cache: word vocabularies repeat, and a dict hit is ~4x cheaper
# than crc32 + encode. Bounded so odd inputs cannot grow it without limit.
_BUCKET: dict[str, int] = {}
_BUCKET_MAX = 200_000


def _bucket(tok: str) -> int:
    b = _BUCKET.get(tok)
    if b is None:
        b = zlib.crc32(tok.encode()) & 0xFFFFFFFF
        if len(_BUCKET) < _BUCKET_MAX:
            _BUCKET[tok] = b
    return b


def _sq(x: float, cap: float) -> float:
    """Saturating scale to [0, 1]: keeps every dense feature on one scale."""
    return x / (x + cap)


def request_features(text: str) -> dict[int, float]:
    """Sparse feature vector of ``text``; deterministic, no I/O, no globals mutated
    except a bounded token->hash cache."""
    n = len(text)
    low = text.lower()
    f: dict[int, float] = {}
    # --- dense, whole text -------------------------------------------------------
    f[0] = 1.0
    f[1] = math.log1p(n) / 10.0
    if n > 200:
        f[2] = 1.0
    if n > 1000:
        f[3] = 1.0
    if n > 4000:
        f[4] = 1.0
    nl = text.count("\n")
    f[5] = math.log1p(nl) / 6.0
    if "```" in text:
        f[6] = 1.0
    kw = sum(low.count(k) for k in _CODE_KW)
    if kw:
        f[7] = _sq(kw, 3.0)
    punct = text.count("{") + text.count(";") + text.count("}")
    if punct:
        f[8] = _sq(punct, 5.0)
    ind = text.count("\n    ") + text.count("\n\t")
    if ind:
        f[9] = _sq(ind, 3.0)
    if n:
        digits = sum(1 for ch in text if ch.isdigit()) if n <= 4096 else sum(
            text.count(d) for d in "0123456789"
        )
        if digits:
            f[10] = min(1.0, 5.0 * digits / n)
    ops = sum(text.count(o) for o in _MATH_OPS)
    if ops:
        f[11] = _sq(ops, 5.0)
    lat = sum(text.count(k) for k in _LATEX)
    if lat:
        f[12] = _sq(lat, 2.0)
    head = low[:_HEAD_CHARS] if n <= _HEAD_CHARS + _TAIL_CHARS else (
        low[:_HEAD_CHARS] + " \n " + low[-_TAIL_CHARS:]
    )
    nums = len(_NUM_RE.findall(head))
    if nums:
        f[13] = math.log1p(nums) / 4.0
    for idx, keys in (
        (14, ("what ", "which ")),
        (15, ("why ", "how ")),
        (16, ("prove", "derive", "show that")),
        (17, ("write ", "implement", "create a", "fix ")),
        (18, ("calculate", "compute", "how many", "how much", "find the")),
        (19, ("\na.", "\na)", "(a)", "options:", "\nb.")),
        (20, ("explain", "describe", "discuss", "compare")),
    ):
        if any(k in head for k in keys):
            f[idx] = 1.0
    base = _IDX["dom_law"]
    for j, keys in enumerate(_DOMAINS.values()):
        c = sum(head.count(k) for k in keys)
        if c:
            f[base + j] = _sq(c, 2.0)
    # --- hashed unigrams + bigrams (presence), head/tail only ---------------------
    toks = _TOKEN_RE.findall(head)
    seen: set[int] = set()
    prev = 0x9E3779B1
    for t in toks:
        h = _bucket(t)
        seen.add(h & _MASK)
        # bigram hash from the two unigram hashes: no string building per pair
        seen.add(((prev * 0x01000193) ^ h) >> 7 & _MASK)
        prev = h
    if seen:
        v = 1.0 / math.sqrt(len(seen))
        for b in seen:
            f[N_DENSE + b] = v
    return f
