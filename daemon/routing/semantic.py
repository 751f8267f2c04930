"""Semantic routes: send a task to a model or pool when its text resembles a
route's example phrases.

The text representation is deliberately light and local: lower-cased word
unigrams and bigrams hashed into a sparse vector, compared by cosine
similarity with each route's examples (the best-matching example counts).
No model is downloaded; a 2 KB prompt vectorises in tens of microseconds.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

from switchman_shared.config_schema import SemanticRoute

_WORD = re.compile(r"[a-z0-9_]+")
_STOP = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "of", "on", "or", "please", "the", "this", "that", "to", "with", "you", "your", "can",
    "could", "would", "should", "i", "me", "my", "we", "our",
})
_BUCKETS = 1 << 18


def vectorise(text: str) -> dict[int, float]:
    """Unit-length hashed bag of word unigrams and bigrams."""
    words = [w for w in _WORD.findall(text.lower()[:4000]) if w not in _STOP]
    counts: dict[int, float] = {}
    for i, w in enumerate(words):
        for term in (w, f"{words[i - 1]} {w}" if i else None):
            if term is None:
                continue
            h = zlib.crc32(term.encode()) & (_BUCKETS - 1)
            counts[h] = counts.get(h, 0.0) + 1.0
    norm = math.sqrt(sum(v * v for v in counts.values()))
    return {k: v / norm for k, v in counts.items()} if norm else {}


def cosine(a: dict[int, float], b: dict[int, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    return sum(v * b.get(k, 0.0) for k, v in a.items())


@dataclass(slots=True)
class Match:
    route: SemanticRoute
    score: float
    example: str


class SemanticRouter:
    def __init__(self, routes: list[SemanticRoute]) -> None:
        self.routes = [(r, [(ex, vectorise(ex)) for ex in r.examples]) for r in routes]

    def match(self, text: str) -> Match | None:
        """The route whose closest example is most similar to ``text``, if that
        similarity reaches the route's threshold."""
        if not self.routes or not text:
            return None
        v = vectorise(text)
        if not v:
            return None
        best: Match | None = None
        for route, examples in self.routes:
            for ex, ev in examples:
                s = cosine(v, ev)
                if s >= route.threshold and (best is None or s > best.score):
                    best = Match(route, s, ex)
        return best
