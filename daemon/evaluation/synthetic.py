"""Seeded synthetic agent sessions, calibrated to TraceLab's published aggregates.

Targets (TraceLab, 4,265 Claude Code / Codex sessions): ~84 calls per session,
~154K input tokens per call, ~95.8% of input tokens read from cache, ~523 output
tokens per call. The shape follows Claude Code: a system+tools prefix, tasks of
tool-loop steps whose history grows by the reply plus a tool result, sub-agents
with their own prefix, utility calls (titles), a compaction when the context
passes a per-session threshold (history replaced by a summary), and idle gaps
between tasks, some longer than the 5-minute cache TTL.

Tasks (``tasks``): by default each task's prompt is a real held-out question
from a router outcome data set and its quality on each pool model is that
question's recorded outcome for the pool model's data-set counterpart (see
``evaluation.tasks``). A drawn task difficulty (0..1) sets the task's length
and picks a question of matching difficulty rank. With ``tasks="templates"``
the text comes from made-up templates and the difficulty itself is ground
truth through an assumed success curve (``success_prob``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

from switchman_daemon.evaluation import tasks as T
from switchman_daemon.evaluation.schema import TraceRecord

TARGETS = {"calls_per_session": 84.0, "prompt_tokens_per_call": 154_000.0,
           "cache_read_share": 0.958, "output_tokens_per_call": 523.0}

_EASY = (
    "Fix the typo in the README heading.",
    "Rename the variable `cfg` to `config` in utils.py.",
    "Add a missing import for `Path` in cli.py.",
    "Bump the version number to 0.4.2.",
    "Update the docstring of `load_settings` to mention the env override.",
    "Remove the unused helper `_old_parse` from parser.py.",
)
_MID = (
    "Add a `--json` flag to the `status` command that prints the same fields as JSON, "
    "with a test.",
    "The date parser fails on ISO strings with a Z suffix; fix it and add tests for "
    "offsets.",
    "Implement pagination for the /items endpoint (limit and cursor) and update the "
    "client.",
    "Write unit tests for the retry helper covering backoff and the max-attempts limit.",
    "Refactor the config loader so that defaults, file and env overrides merge in one place.",
)
_HARD = (
    "There is an intermittent deadlock in the job scheduler when two workers renew leases "
    "concurrently. Find the race, explain the lock ordering, fix it without a global lock, "
    "and add a stress test that reproduces it deterministically.",
    "Migrate the storage layer from the synchronous ORM to async sessions across the "
    "repository, keeping transactions correct under cancellation, and make the test suite "
    "pass. Several modules depend on implicit lazy loading.",
    "The incremental compiler produces wrong code when a generic function is inlined into a "
    "closure that captures a mutable reference. Track down the bug in the IR lowering, fix "
    "it, and add regression tests for the aliasing cases.",
    "Design and implement a cache-invalidation scheme for the distributed build graph: "
    "derive the invariants, prove the rebuild is minimal for edits of a single node, and "
    "implement it with property-based tests.",
)


def success_prob(difficulty: float, model_quality: float) -> float:
    """Ground truth P(task solved) for a model of catalog quality ``model_quality``:
    near 1 for easy tasks on every tier, falling off first for weaker models."""
    return 1.0 / (1.0 + math.exp(-8.0 * (model_quality - difficulty)))


def _task_text(rng: random.Random, d: float) -> str:
    bank = _EASY if d < 0.35 else _MID if d < 0.65 else _HARD
    text = rng.choice(bank)
    if d >= 0.65:  # hard asks come with context: logs, constraints
        text += ("\n\nTraceback (most recent call last):\n  File \"worker.py\", line 88, in run\n"
                 "    lease.renew()\nTimeoutError: lease renewal timed out after 30s\n"
                 "Constraints: keep the public API stable; the fix must be covered by tests.")
    return text


def _lognormal(rng: random.Random, mean: float, sigma: float) -> float:
    # parametrised by the mean, not the median
    return rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)


_BETA = (1.6, 2.2)  # task difficulty draw
# ~4.9 tasks per session: 96 sessions give ~470 tasks and a paired standard
# error of ~3 points on a quality gap (24 sessions left it at ~5)
DEFAULT_SESSIONS = 96


def generate(n_sessions: int = DEFAULT_SESSIONS, seed: int = 7, tasks: str = T.DEFAULT_TASK_SET,
             pool: Sequence[str] = T.DEFAULT_POOL,
             data_dir: Path | None = None) -> list[TraceRecord]:
    """``n_sessions`` synthetic sessions, deterministic for ``seed`` (and the
    task set, pool and data). ``pool``: the pool models the outcomes are for."""
    rng = random.Random(seed)
    ts = None if tasks == T.TEMPLATES else T.load(tasks, T.pool_quality(pool), data_dir)
    out: list[TraceRecord] = []
    for i in range(n_sessions):
        out.extend(_session(rng, f"syn-{seed}-{i:04d}", i * 420.0 + rng.uniform(0, 300), ts))
    out.sort(key=lambda r: r.t)
    return out


class _Task:
    """One task's prompt and what the replay needs to score it."""

    def __init__(self, rng: random.Random, d: float, ts: T.TaskSet | None) -> None:
        self.outcomes: dict[str, float] | None = None
        self.extra: dict[str, object] = {}
        self.difficulty: float | None = d
        if ts is None:
            self.text = _task_text(rng, d)
            return
        q = ts.pick(T.beta_quantile_of(d, *_BETA))
        self.text, self.difficulty = q.text, None
        self.outcomes = {p: q.scores[m] for p, m in ts.tiers.items()}
        self.extra = {"task_set": ts.name, "dataset": ts.dataset, "qid": q.qid,
                      "heads": ts.heads()}


def _session(rng: random.Random, sid: str, start: float,
             ts: T.TaskSet | None) -> list[TraceRecord]:
    recs: list[TraceRecord] = []
    t = start
    system = int(rng.uniform(16_000, 26_000))  # Claude Code system + tool definitions
    compact_at = rng.uniform(260_000, 460_000)
    # a third of sessions resume an earlier conversation (claude --continue): the
    # history is there from the first call, cold
    prompt = system + (int(rng.uniform(60_000, 200_000)) if rng.random() < 0.35 else 0)
    n_tasks = max(1, round(_lognormal(rng, 5.0, 0.5)))
    first, rebuilt = True, False
    out_prev = 0
    for k in range(n_tasks):
        task = f"{sid}/t{k}"
        d = min(0.97, max(0.02, rng.betavariate(*_BETA)))
        tk = _Task(rng, d, ts)
        text = tk.text
        if k:
            # idle between tasks: often short, sometimes past the 5-minute TTL
            t += rng.uniform(360, 2400) if rng.random() < 0.2 else rng.uniform(20, 200)
        if rng.random() < 0.5:  # a title / topic utility call on the cheap path
            recs.append(TraceRecord(sid, t, 600 + len(text) // 4, role="utility",
                                    task_id=task, new_tokens=None, output_tokens=30,
                                    task_text=text, difficulty=tk.difficulty, tools=False,
                                    source="synthetic"))
            t += 1.0
        steps = max(2, round(_lognormal(rng, 5.0 + 21.0 * d, 0.6)))
        first_new = len(text) // 4 + int(rng.uniform(300, 2500))
        sub_at = rng.randrange(1, steps) if rng.random() < 0.3 and steps > 2 else -1
        for step in range(steps):
            if prompt > compact_at:
                # the client summarises the history on the model holding the cache
                recs.append(TraceRecord(sid, t, prompt + 400, role="compaction", task_id=task,
                                        new_tokens=400, output_tokens=int(rng.uniform(3000, 6000)),
                                        source="synthetic"))
                t += rng.uniform(40, 90)
                summary = int(rng.uniform(25_000, 55_000))
                prompt = system + summary
                rebuilt = True
            out_tok = max(20, int(_lognormal(rng, 523, 0.9)))
            # what this call appends: the user's task text and first file reads, or a
            # tool result; plus the previous reply
            add = first_new if step == 0 else int(_lognormal(rng, 3400, 1.0))
            if first or rebuilt:
                prompt += add
                new = prompt - system  # the whole history is new to every cache
            else:
                new = out_prev + add
                prompt += new
            first = rebuilt = False
            recs.append(TraceRecord(sid, t, prompt, role="main", task_id=task, new_tokens=new,
                                    output_tokens=out_tok,
                                    task_text=text if step == 0 else "",
                                    difficulty=tk.difficulty, source="synthetic",
                                    outcomes=tk.outcomes if step == 0 else None,
                                    extra=tk.extra if step == 0 else {}))
            t += out_tok / 60.0 + rng.uniform(2, 25)  # generation + tool time
            out_prev = out_tok
            if step == sub_at:
                t = _subagent(rng, recs, sid, task, tk.difficulty, t, f"a{k}")
    return recs


def _subagent(rng: random.Random, recs: list[TraceRecord], sid: str, task: str,
              d: float | None, t: float, agent: str) -> float:
    """A sub-agent (Task tool): its own system prompt and short history."""
    prompt = int(rng.uniform(10_000, 18_000))
    steps = max(2, round(_lognormal(rng, 9, 0.5)))
    for step in range(steps):
        new = prompt if step == 0 else int(_lognormal(rng, 3000, 0.9))
        if step:
            prompt += new
        out_tok = max(20, int(_lognormal(rng, 450, 0.8)))
        recs.append(TraceRecord(sid, t, prompt, role="subagent", agent_id=agent, task_id=task,
                                new_tokens=new, output_tokens=out_tok,
                                task_text="Search the codebase and report back." if step == 0
                                else "", difficulty=d, source="synthetic"))
        t += out_tok / 60.0 + rng.uniform(1, 8)
    return t
