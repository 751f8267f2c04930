"""Loaders for the router outcome data sets under ``shared/data`` and the fixed
evaluation split.

Every loader yields ``Item``s: one prompt with a score in [0, 1] per model that
answered it. Scores are 0/1 correctness (MMLU-Pro, RouteLLM GSM8K/MMLU), the
LLMRouter task metric, or the MT-Bench judge score / 10.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SPLIT_RULE = "int(sha256(str(question_id)).hexdigest(), 16) % 5 == 0 -> eval (prompt text if no id)"

DATASETS = ("mmlu_pro", "llmrouter", "routellm_gsm8k", "routellm_mmlu", "routellm_mtbench")

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@dataclass(slots=True)
class Item:
    dataset: str
    qid: str  # the dataset's own id as a string, or the prompt text
    text: str
    scores: dict[str, float] = field(default_factory=dict)


def is_eval(qid: str) -> bool:
    """The fixed evaluation split shared by everyone (issue text): never train or tune on it."""
    return int(hashlib.sha256(str(qid).encode("utf-8")).hexdigest(), 16) % 5 == 0


def default_data_dir() -> Path:
    env = os.environ.get("SWITCHMAN_DATA_SETS")
    if env:
        return Path(env)
    # daemon/training/data.py -> repo root is parents[2]; data lives beside the repo
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_mmlu_pro(root: Path) -> list[Item]:
    d = root / "mmlu_pro_outcomes"
    items: dict[str, Item] = {}
    with gzip.open(d / "questions.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            opts = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(q["options"]))
            qid = str(q["question_id"])
            items[qid] = Item("mmlu_pro", qid, f"{q['question']}\n{opts}\nAnswer:")
    with gzip.open(d / "outcomes.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            it = items.get(row["question_id"])
            if it is not None:
                it.scores[row["model"]] = float(row["correct"])
    return [it for it in items.values() if it.scores]


def load_llmrouter(root: Path) -> list[Item]:
    """train.json + test.json, de-duplicated by question text (the README warns
    that 119 test questions repeat train ones). No ids: the split uses the text."""
    d = root / "llmrouter_uiuc" / "dcrouter_preprocessed"
    items: dict[str, Item] = {}
    for name in ("train.json", "test.json"):
        for r in json.loads((d / name).read_text(encoding="utf-8")):
            s = r["scores"]
            if isinstance(s, str):  # the README documents a dict-as-string form
                import ast

                s = ast.literal_eval(s)
            q = r["question"]
            if q not in items:
                items[q] = Item("llmrouter", q, q, {k: float(v) for k, v in s.items()})
    return list(items.values())


def _contaminated(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as fh:
        return {json.loads(line)["eval_prompt"] for line in fh if line.strip()}


def _truthy(v: str) -> float:
    return 1.0 if v.strip().lower() in ("true", "1", "1.0") else 0.0


def load_routellm(root: Path) -> list[Item]:
    """GSM8K, MMLU (prompt text as id) and MT-Bench (its question_id); the
    README's contaminated prompts are dropped everywhere."""
    ev = root / "routellm_lmsys" / "evals"
    out: list[Item] = []
    csv.field_size_limit(1 << 24)
    bad = _contaminated(ev / "gsm8k" / "contaminated_prompts.jsonl")
    with (ev / "gsm8k" / "gsm8k_responses.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            p = row["prompt"]
            if p in bad:
                continue
            sc = {m: _truthy(row[m]) for m in (ROUTELLM_STRONG, ROUTELLM_WEAK)}
            out.append(Item("routellm_gsm8k", p, p, sc))
    bad = _contaminated(ev / "mmlu" / "contaminated_prompts.jsonl")
    seen: set[str] = set()
    for f in sorted((ev / "mmlu" / "responses").glob("mmlu_*.csv")):
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                p = row["prompt"]
                if p in bad or p in seen:
                    continue
                seen.add(p)
                sc = {m: _truthy(row[m]) for m in (ROUTELLM_STRONG, ROUTELLM_WEAK)}
                out.append(Item("routellm_mmlu", p, p, sc))
    bad = _contaminated(ev / "mt_bench" / "contaminated_prompts.jsonl")
    qs: dict[int, list[str]] = {}
    with (ev / "mt_bench" / "question.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            qs[q["question_id"]] = q["turns"]
    acc: dict[tuple[int, str], list[float]] = {}
    with (ev / "mt_bench" / "judgements.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            j = json.loads(line)
            if j.get("score", -1) >= 1:
                acc.setdefault((j["question_id"], j["model"]), []).append(float(j["score"]))
    for qid, turns in qs.items():
        if turns[0] in bad:
            continue
        sc = {m: sum(v) / len(v) / 10.0 for (q, m), v in acc.items() if q == qid}
        if len(sc) == 2:
            out.append(Item("routellm_mtbench", str(qid), "\n\n".join(turns), sc))
    return out


def load_all(root: Path, only: Iterable[str] | None = None) -> list[Item]:
    want = set(only) if only else set(DATASETS)
    items: list[Item] = []
    if "mmlu_pro" in want:
        items += load_mmlu_pro(root)
    if "llmrouter" in want:
        items += load_llmrouter(root)
    if want & {"routellm_gsm8k", "routellm_mmlu", "routellm_mtbench"}:
        items += [it for it in load_routellm(root) if it.dataset in want]
    return items


_NORM = re.compile(r"[^a-z0-9]+")


def stem(text: str) -> str:
    """Normalised question opening, to catch the same question across data sets
    (MMLU-Pro reuses MMLU questions; RouteLLM and LLMRouter ship MMLU too)."""
    t = _NORM.sub("", text.lower())
    if t.startswith("q"):  # LLMRouter's "Q: ..." prefix
        t2 = t[1:]
        return t2[:80] if len(t2) >= 40 else t[:80]
    return t[:80]


def split(items: list[Item]) -> tuple[list[Item], list[Item], int]:
    """(train, eval, n_dropped): eval by the fixed hash rule; training rows whose
    question opening equals any eval question's opening (in any data set) are
    dropped too, so a question held out in one data set cannot leak through
    another."""
    ev = [it for it in items if is_eval(it.qid)]
    ev_stems = {stem(it.text) for it in ev}
    ev_stems.discard("")
    train: list[Item] = []
    dropped = 0
    for it in items:
        if is_eval(it.qid):
            continue
        if stem(it.text) in ev_stems:
            dropped += 1
            continue
        train.append(it)
    return train, ev, dropped
