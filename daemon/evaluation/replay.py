"""Replay traces through the real routing code against the simulator's cache.

Each trace record becomes an Anthropic Messages request body shaped like Claude
Code's (tools, a system prompt with a breakpoint, a growing message history
whose text lengths match the token counts, a moving breakpoint on the last
block, session / agent headers). ``read_signals`` and ``Router.choose`` run on
it unmodified. The *simulator's* cache (``switchman_daemon.sim.cache``, the
provider's truth) then says what the chosen model reads and writes, on the
same simulated clock the router's ``CacheTracker`` (its belief) uses; the usage
is priced with the model's catalog prices and fed back through
``Router.observe``. Nothing sleeps; no wall time is read.

Bodies do not depend on the chosen model, so each record is prepared once
(body, signals, the sim's prefix hashes) and replayed under every strategy.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from switchman_daemon.config import load_config, merge
from switchman_daemon.evaluation.keepalive_sim import KeepAliveSim
from switchman_daemon.evaluation.schema import TraceRecord
from switchman_daemon.evaluation.synthetic import success_prob
from switchman_daemon.evaluation.tasks import DEFAULT_POOL as DEFAULT_POOL
from switchman_daemon.models import ModelInfo, ModelRegistry
from switchman_daemon.protocol.ir import Usage
from switchman_daemon.routing.prefix import build_chain
from switchman_daemon.routing.quality_prior import QualityPredictor
from switchman_daemon.routing.router import NoCandidate, Router
from switchman_daemon.routing.signals import Signals, read_signals
from switchman_daemon.routing.tracker import CacheTracker
from switchman_daemon.sim.anthropic import prefix_segments
from switchman_daemon.sim.cache import CacheEntry, CacheTable, Prefixes, anthropic_apply, chain
from switchman_shared.catalog import CatalogModel, load_catalog
from switchman_shared.config_schema import Config

POOL = "eval"
_M = 1_000_000.0


class SimClock:
    """The one simulated clock shared by the provider's cache and the tracker."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- request bodies ------------------------------------------------------------------

_WORDS = ("def ", "return ", "self.", "value ", "config ", "import ", "test_", "assert ",
          "for ", "in ", "range(", ") ", "if ", "else: ", "x ", "= ", "None ", "0\n")
_FILL = "".join(_WORDS[(i * 7 + i // 5) % len(_WORDS)] for i in range(220_000)) * 2
_TOOLS = [
    {"name": n, "description": d, "input_schema": {"type": "object", "properties": {
        "arg": {"type": "string", "description": "argument"}}}}
    for n, d in (("Bash", "Run a shell command in the repository and return its output."),
                 ("Read", "Read a file from the working tree, optionally a line range."),
                 ("Edit", "Replace an exact string in a file with another string."),
                 ("Task", "Launch a sub-agent with its own context for a focused search."))]
_COMPACT_TEXT = ("Your task is to create a detailed summary of the conversation so far, "
                 "paying close attention to the user's explicit requests. ")
_UTILITY_SYSTEM = "Write a short title (at most six words) for the conversation below."


def _text(uid: str, tokens: int, head: str = "") -> str:
    """Text of ~``tokens`` sim tokens (4 bytes each), unique through ``uid``."""
    start = f"[{uid}] {head}\n"
    need = max(0, 4 * max(tokens, 1) - len(start))
    off = zlib.crc32(uid.encode()) % 1000  # vary content a little between blocks
    return start + _FILL[off:off + need]


def _ask_tokens(text: str) -> int:
    return (len(text.encode()) + 3) // 4 + 4


@dataclass
class _Stream:
    system: list[dict[str, Any]]
    tools: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    task: str = ""
    prev_output: int = 0
    prev_prompt: int = 0
    rebuild: bool = False
    n: int = 0


def _strip_marks(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History without the moving breakpoint (it sits on the newest block only)."""
    if not msgs:
        return msgs
    last = msgs[-1]
    blocks = [{k: v for k, v in b.items() if k != "cache_control"} for b in last["content"]]
    return [*msgs[:-1], {"role": last["role"], "content": blocks}]


def _marked(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = msgs[-1]
    blocks = list(last["content"])
    blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    return [*msgs[:-1], {"role": last["role"], "content": blocks}]


class BodyBuilder:
    """Turns records into Claude-Code-shaped bodies, one history per stream."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.n_utility = 0

    def build(self, r: TraceRecord) -> tuple[dict[str, Any], dict[str, str]]:
        headers = {"user-agent": "claude-cli/2.1.0 (external, replay)",
                   "x-claude-code-session-id": r.session_id}
        if r.agent_id and r.role == "subagent":
            headers["x-claude-code-agent-id"] = r.agent_id
        body: dict[str, Any] = {"model": POOL, "max_tokens": 32000, "stream": True}
        if r.role == "utility":
            self.n_utility += 1
            uid = f"{r.session_id}/u{self.n_utility}"
            body["system"] = [{"type": "text", "text": _UTILITY_SYSTEM}]
            body["messages"] = [{"role": "user", "content": [{
                "type": "text", "text": _text(uid, max(r.prompt_tokens - 20, 1), r.task_text),
                "cache_control": {"type": "ephemeral"}}]}]
            return body, headers
        key = f"{r.session_id}/{r.agent_id}" if r.role == "subagent" and r.agent_id \
            else r.session_id
        st = self.streams.get(key)
        if r.segments:
            msgs = self._segments(key, r)
            st = self.streams[key] = _Stream(system=[], tools=r.tools, messages=msgs,
                                             task=r.task_id)
            st.prev_prompt = r.prompt_tokens
            return self._finish(body, st, r, st.messages), headers
        new = r.new_tokens if r.new_tokens is not None else (
            r.prompt_tokens - st.prev_prompt if st else r.prompt_tokens)
        if st is None or st.rebuild or new <= 0 or new >= r.prompt_tokens \
                or r.prompt_tokens < st.prev_prompt:
            st = self._rebuild(key, st, r, new)
        else:
            self._append(key, st, r, new)
        msgs = st.messages
        if r.role == "compaction":
            st.rebuild = True  # the summary rides on the history, which is then replaced
        else:
            st.task = r.task_id
        st.prev_output = r.output_tokens
        st.prev_prompt = r.prompt_tokens
        return self._finish(body, st, r, msgs), headers

    def _finish(self, body: dict[str, Any], st: _Stream, r: TraceRecord,
                msgs: list[dict[str, Any]]) -> dict[str, Any]:
        if st.tools and r.tools:
            body["tools"] = _TOOLS
        if st.system:
            body["system"] = st.system
        body["messages"] = _marked(msgs)
        return body

    def _rebuild(self, key: str, old: _Stream | None, r: TraceRecord, new: int) -> _Stream:
        prompt = r.prompt_tokens
        if 0 < new < prompt:
            sys_tok = prompt - new
        elif old is not None and old.system:
            sys_tok = len(old.system[0]["text"]) // 4
        else:
            sys_tok = min(prompt // 2, 20_000)
        system = old.system if old is not None and old.system and \
            abs(len(old.system[0]["text"]) // 4 - sys_tok) < 64 else \
            [{"type": "text", "text": _text(f"{key}/system", sys_tok - 80),
              "cache_control": {"type": "ephemeral"}}]
        st = _Stream(system=system, tools=r.tools, task=r.task_id)
        st.n = (old.n if old else 0) + 1
        head = r.task_text if r.role != "compaction" else _COMPACT_TEXT
        if old is not None and r.role == "main" and r.task_id == old.task:
            head = "This session is being continued from a previous conversation. " + head
        # the history (or summary) first, the user's own words last: routing reads
        # the task text from the final user turn, as it would from a real client
        hist = _text(f"{key}/{st.n}/h", max(prompt - sys_tok - _ask_tokens(head), 1))
        st.messages = [
            {"role": "user", "content": [{"type": "text", "text": hist}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Understood."}]},
            {"role": "user", "content": [{"type": "text", "text": head or "Continue."}]}]
        self.streams[key] = st
        return st

    def _append(self, key: str, st: _Stream, r: TraceRecord, new: int) -> None:
        st.n += 1
        uid = f"{key}/{st.n}"
        out = min(st.prev_output, max(new - 1, 0))
        rest = max(new - out, 1)
        msgs = _strip_marks(st.messages)
        new_task = r.role == "main" and r.task_id != st.task
        if new_task:  # the user's message is just the task; the rest is the reply
            out, rest = max(new - _ask_tokens(r.task_text), 1), 0
        asst: list[dict[str, Any]] = [{"type": "text", "text": _text(uid + "/a", max(out - 12, 1))}]
        if r.role == "compaction":
            user: list[dict[str, Any]] = [{"type": "text", "text": _text(uid + "/c", rest,
                                                                          _COMPACT_TEXT)}]
        elif new_task:
            user = [{"type": "text", "text": r.task_text or "Next task."}]
        else:
            tid = f"toolu_{zlib.crc32(uid.encode()):010d}"
            asst.append({"type": "tool_use", "id": tid, "name": "Bash", "input": {"arg": "x"}})
            user = [{"type": "tool_result", "tool_use_id": tid,
                     "content": _text(uid + "/r", rest)}]
        msgs = [*msgs, {"role": "assistant", "content": asst}, {"role": "user", "content": user}]
        st.messages = msgs  # after a compaction, _rebuild replaces it

    def _segments(self, key: str, r: TraceRecord) -> list[dict[str, Any]]:
        segs = r.segments or []
        msgs: list[dict[str, Any]] = []
        role = "user"
        for s in segs:
            msgs.append({"role": role, "content": [
                {"type": "text", "text": _text(f"{key}/{s['id']}", int(s["tokens"]))}]})
            role = "assistant" if role == "user" else "user"
        if msgs and msgs[-1]["role"] != "user":
            msgs.append({"role": "user", "content": [{"type": "text", "text": "continue"}]})
        return msgs


# -- prepared records ------------------------------------------------------------------


@dataclass(slots=True)
class Prepared:
    i: int
    rec: TraceRecord
    body: dict[str, Any]
    signals: Signals
    prefixes: Prefixes
    unit: str  # task x stream: what the oracle decides per
    prompt: int  # sim-counted prompt tokens


def prepare(records: Sequence[TraceRecord]) -> list[Prepared]:
    """Bodies, signals and the sim's prefix hashes, once per record."""
    bb = BodyBuilder()
    out: list[Prepared] = []
    for i, r in enumerate(sorted(records, key=lambda x: x.t)):
        body, headers = bb.build(r)
        raw = orjson.dumps(body)
        s = read_signals("anthropic", body, headers, len(raw), raw)
        px = chain(prefix_segments(body))
        stream = r.agent_id if r.role == "subagent" and r.agent_id else "main"
        out.append(Prepared(i, r, body, s, px, f"{r.session_id}|{r.task_id}|{stream}", px.total))
    return out


# -- the provider (sim) and the replay loop ------------------------------------------------


@dataclass(slots=True)
class Served:
    model: str
    cost: float
    read: int
    write: int
    uncached: int
    output: int
    latency_ms: float
    ttfb_ms: float


class SimProvider:
    """Provider truth: the sim's cache table and the sim's pacing for its models."""

    def __init__(self, clock: SimClock, catalog: dict[str, CatalogModel]) -> None:
        self.clock = clock
        self.table = CacheTable(clock)
        self.catalog = catalog

    def serve(self, m: ModelInfo, p: Prepared, table: CacheTable | None = None) -> Served:
        cat = self.catalog[m.upstream_id]
        u = anthropic_apply(table or self.table, cat.id, p.prefixes, cat.min_cache_prefix)
        uncached = p.prompt - u.read - u.write
        out = p.rec.output_tokens
        pr = m.prices
        cost = (u.read * pr.cache_read + u.write_5m * pr.cache_write_5m
                + u.write_1h * pr.cache_write_1h + uncached * pr.input + out * pr.output) / _M
        sim = cat.sim
        ttfb = (sim.ttft_ms + 1000.0 * (uncached + u.write) / sim.prefill_tok_per_s) if sim \
            else 500.0
        lat = ttfb + (1000.0 * out / sim.tok_per_s if sim else 0.0)
        return Served(m.name, cost, u.read, u.write, uncached, out, lat, ttfb)

    def scratch(self) -> CacheTable:
        """A copy of the table for look-ahead (the oracle's counterfactuals)."""
        t = CacheTable(self.clock)
        t.entries = {k: CacheEntry(e.tokens, e.expires_at, e.ttl)
                     for k, e in self.table.entries.items()}
        return t


class Env:
    """Everything one strategy run needs: a fresh clock, sim cache and models."""

    def __init__(self, pool: Sequence[str], objective: dict[str, float] | None = None,
                 quality: QualityPredictor | None = None, base: Config | None = None,
                 keepalive: bool | None = None) -> None:
        self.pool = list(pool)
        over: dict[str, Any] = {"pools": {POOL: {"models": self.pool}}}
        routing: dict[str, Any] = {}
        if objective:
            routing["objective"] = objective
        if keepalive is not None:
            routing["keepalive"] = keepalive
        if routing:
            over["routing"] = routing
        if base is None:
            self.config = load_config(None, overrides=over)
        else:
            # a running daemon's config (its models, prices and routing settings)
            self.config = Config.model_validate(merge(base.model_dump(), over))
        self.registry = ModelRegistry(self.config)
        self.models = [self.registry.models[n] for n in self.pool]
        self.clock = SimClock()
        self.sim = SimProvider(self.clock, _catalog())
        self.quality = quality

    def capable(self, p: Prepared) -> list[ModelInfo]:
        ok = [m for m in self.models if p.prompt <= m.context_window
              and (m.tools or not p.signals.has_tools)]
        return ok or [max(self.models, key=lambda m: m.context_window)]


_CATALOG: dict[str, CatalogModel] | None = None


def _catalog() -> dict[str, CatalogModel]:
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = load_catalog()
    return _CATALOG


# -- strategies ------------------------------------------------------------------------------


class Strategy(Protocol):
    name: str

    def choose(self, p: Prepared, env: Env) -> ModelInfo: ...

    def observe(self, p: Prepared, env: Env, m: ModelInfo, s: Served) -> None: ...


class _StickyBase:
    """Per decision point (new task, new stream, model no longer capable), else stay."""

    name = "base"

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, ModelInfo]] = {}

    def pick(self, p: Prepared, env: Env, ok: list[ModelInfo]) -> ModelInfo:
        raise NotImplementedError

    def choose(self, p: Prepared, env: Env) -> ModelInfo:
        ok = env.capable(p)
        if p.rec.role == "utility":
            return self.pick(p, env, ok)
        stream = p.unit.rsplit("|", 1)[1]
        key = f"{p.rec.session_id}|{stream}"
        prev = self.last.get(key)
        if prev is not None and (prev[0] == p.unit or p.rec.role == "compaction") \
                and prev[1] in ok:
            return prev[1]
        m = self.pick(p, env, ok)
        self.last[key] = (p.unit, m)
        return m

    def observe(self, p: Prepared, env: Env, m: ModelInfo, s: Served) -> None:
        pass


class Strongest(_StickyBase):
    name = "always-strongest"

    def pick(self, p: Prepared, env: Env, ok: list[ModelInfo]) -> ModelInfo:
        return max(ok, key=lambda m: (m.quality, m.prices.output))


class Cheapest(_StickyBase):
    name = "always-cheapest"

    def pick(self, p: Prepared, env: Env, ok: list[ModelInfo]) -> ModelInfo:
        return min(ok, key=lambda m: (m.prices.input + m.prices.output, -m.quality))


class RandomPick(_StickyBase):
    name = "random"

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def pick(self, p: Prepared, env: Env, ok: list[ModelInfo]) -> ModelInfo:
        return self.rng.choice(ok)


class BlindTracker(CacheTracker):
    """A tracker that never knows anything warm: the cache-unaware ablation.
    It still records usage (learned minimum prefixes), but reports no warm
    tokens and no session (so no stickiness and no compaction pinning): each
    request is routed on its own, as per-request routers do."""

    def warm_tokens(self, sid: str, model: str, chain: Any, now: float | None = None) -> int:
        return 0

    def peek_session(self, sid: str) -> None:  # type: ignore[override]
        return None


class ColdTracker(CacheTracker):
    """The milder ablation: sessions, tasks and compaction pinning as usual,
    but every candidate is priced as if its cache were cold, so a new task
    may move the session without counting the re-write."""

    def warm_tokens(self, sid: str, model: str, chain: Any, now: float | None = None) -> int:
        return 0


class RouterStrategy:
    """Switchman's Router, unmodified, fed by the replay's bodies and usage."""

    def __init__(self, env: Env, name: str = "switchman", *, cache_aware: bool = True,
                 sticky: bool = False) -> None:
        """``cache_aware=False``: a per-request router (``BlindTracker``), or
        with ``sticky`` one that keeps sessions and tasks (``ColdTracker``)."""
        self.name = name
        tracker_cls = CacheTracker if cache_aware else ColdTracker if sticky else BlindTracker
        self.router = Router(env.config, env.registry, tracker=tracker_cls(clock=env.clock),
                             quality=env.quality)
        self._decision: Any = None
        self.decisions: list[str] = []

    def choose(self, p: Prepared, env: Env) -> ModelInfo:
        s = dataclasses.replace(p.signals, extra=dict(p.signals.extra))
        try:
            d = self.router.choose(s, p.body)
        except NoCandidate:
            self._decision = None
            return max(env.capable(p), key=lambda m: m.quality)
        self._decision = (s, d)
        self.decisions.append(d.how)
        return d.model

    def observe(self, p: Prepared, env: Env, m: ModelInfo, sv: Served) -> None:
        s, d = self._decision if self._decision else (p.signals, None)
        ch = d.chain if d is not None and d.chain is not None and d.chain.links else \
            build_chain("anthropic", p.body)  # as RoutingObserver does
        usage = Usage(input_tokens=sv.uncached, output_tokens=sv.output,
                      cache_read_tokens=sv.read, cache_write_tokens=sv.write)
        self.router.observe(s, ch, m, usage, sv.ttfb_ms, sv.latency_ms)

    def refreshed(self, p: Prepared, env: Env, m: ModelInfo, sv: Served) -> None:
        """A keep-alive refresh was billed: the tracker's entry is warm again
        (not a turn: no session trend, no latency sample)."""
        usage = Usage(input_tokens=sv.uncached, output_tokens=sv.output,
                      cache_read_tokens=sv.read, cache_write_tokens=sv.write)
        self.router.tracker.observe(p.signals.cache_session, m.name, m.min_cache_prefix,
                                    build_chain("anthropic", p.body), usage,
                                    caching_expected=True, update_session=False)


class Oracle(_StickyBase):
    """Per task and stream: among models whose true success probability is within
    ``eps`` of the best, the one whose calls for that unit cost least, computed
    by replaying the unit's future calls on a copy of the sim's cache."""

    name = "oracle"

    def __init__(self, prepared: Sequence[Prepared], truth: Callable[[Prepared, ModelInfo], float],
                 eps: float = 0.01) -> None:
        super().__init__()
        self.eps = eps
        self.truth = truth
        self.units: dict[str, list[Prepared]] = {}
        for p in prepared:
            if p.rec.role in ("main", "subagent"):
                self.units.setdefault(p.unit, []).append(p)

    def pick(self, p: Prepared, env: Env, ok: list[ModelInfo]) -> ModelInfo:
        if p.rec.role in ("utility", "compaction"):
            return min(ok, key=lambda m: m.prices.input)
        probs = {m.name: self.truth(p, m) for m in ok}
        best = max(probs.values())
        good = [m for m in ok if probs[m.name] >= best - self.eps]
        if len(good) == 1:
            return good[0]
        future = [q for q in self.units.get(p.unit, [p]) if q.i >= p.i]
        saved = env.clock.now
        costs = {}
        for m in good:
            table = env.sim.scratch()
            total = 0.0
            for q in future:
                if q.prompt > m.context_window:
                    total += 1e9  # would have to switch mid-task
                    break
                env.clock.now = q.rec.t
                total += env.sim.serve(m, q, table).cost
            costs[m.name] = total
        env.clock.now = saved
        return min(good, key=lambda m: costs[m.name])


# -- running and measuring --------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    cost: float
    quality: float
    cache_hit: float  # read tokens / prompt tokens
    write_tokens: int
    latency_p50: float
    latency_p95: float
    calls: int
    models: dict[str, int]
    objective: dict[str, float] | None = None
    quality_source: str = "ground truth"
    decisions: dict[str, int] | None = None
    keepalive: dict[str, float] | None = None  # refreshes, declined, kept_warm, cost
    per_task: dict[str, float] = field(default_factory=dict)  # task -> quality (not in JSON)
    quality_se: float | None = None  # SE of (quality - a reference's), paired over tasks

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["per_task"]
        if d["quality_se"] is None:
            del d["quality_se"]
        else:
            d["quality_se"] = round(d["quality_se"], 4)
        for k in ("cost", "quality", "cache_hit", "latency_p50", "latency_p95"):
            d[k] = round(d[k], 6 if k == "cost" else 4)
        return d


class Truth:
    """Per-task quality of a model: the trace's recorded outcome for that model
    when it has one (real held-out questions, ``evaluation.tasks``), else ground
    truth from ``difficulty`` (made-up tasks), else the quality predictor's
    estimate on the task's text (traces without outcomes)."""

    def __init__(self, prepared: Sequence[Prepared], predictor: QualityPredictor) -> None:
        self.predictor = predictor
        self.task_info: dict[str, tuple[float | None, str, dict[str, float] | None]] = {}
        sets: set[str] = set()
        for p in prepared:
            key = f"{p.rec.session_id}|{p.rec.task_id}"
            d, text, oc = self.task_info.get(key, (None, "", None))
            if d is None and p.rec.difficulty is not None:
                d = p.rec.difficulty
            if not text and p.rec.task_text and p.rec.role == "main":
                text = p.rec.task_text
            if oc is None and p.rec.outcomes:
                oc = p.rec.outcomes
                sets.add(str(p.rec.extra.get("task_set") or "trace"))
            self.task_info[key] = (d, text, oc)
        kinds = {"recorded" if oc is not None else "truth" if d is not None else "estimate"
                 for d, _, oc in self.task_info.values()}
        self.estimated = "estimate" in kinds
        if kinds == {"recorded"}:
            self.source = f"recorded outcomes ({', '.join(sorted(sets))}, eval split)"
        elif kinds == {"truth"}:
            self.source = "ground truth"
        elif kinds == {"estimate"}:
            self.source = "predictor estimate"
        else:
            self.source = "mixed: " + ", ".join(sorted(kinds))

    def __call__(self, p: Prepared, m: ModelInfo) -> float:
        d, text, oc = self.task_info[f"{p.rec.session_id}|{p.rec.task_id}"]
        if oc is not None:
            if m.name not in oc:
                raise ValueError(f"task {p.rec.task_id!r} has recorded outcomes for "
                                 f"{sorted(oc)}, not {m.name!r}: generate the traces for "
                                 "the same --pool")
            return oc[m.name]
        if d is not None:
            return success_prob(d, m.quality)
        return self.predictor.predict(text, m)


def predictor_for(records: Sequence[TraceRecord]) -> QualityPredictor:
    """The router's quality predictor for these traces: when their tasks come
    from an outcome data set, each pool model is predicted with the learned
    head of its data-set counterpart (``extra.heads``), as a deployment whose
    pool models are in the training data would be."""
    heads: dict[str, str] = {}
    for r in records:
        h = r.extra.get("heads") if r.extra else None
        if isinstance(h, dict):
            heads.update({str(k): str(v) for k, v in h.items()})
    return QualityPredictor(heads=heads)


def run(prepared: Sequence[Prepared], strategy: Strategy, env: Env, truth: Truth,
        objective: dict[str, float] | None = None,
        keepalive: KeepAliveSim | None = None) -> RunResult:
    """Replay every record under ``strategy``; quality = mean over tasks of the
    call-weighted quality (``truth``) of the models that served the task's
    main-loop and sub-agent calls (utility and compaction calls excluded).
    Cache keep-alive runs when ``keepalive`` is given or the env's config has
    ``routing.keepalive`` on; its refreshes are part of the cost."""
    if keepalive is None and env.config.routing.keepalive:
        keepalive = KeepAliveSim()
    cost = 0.0
    read = prompt = write = 0
    lats: list[float] = []
    models: dict[str, int] = {}
    task_q: dict[str, list[float]] = {}
    for p in prepared:
        if keepalive is not None:
            cost += keepalive.advance(p.rec.t, env, strategy)
        env.clock.now = p.rec.t
        m = strategy.choose(p, env)
        sv = env.sim.serve(m, p)
        strategy.observe(p, env, m, sv)
        if keepalive is not None:
            keepalive.served(p, m, sv)
        cost += sv.cost
        read += sv.read
        write += sv.write
        prompt += p.prompt
        lats.append(sv.latency_ms)
        models[m.name] = models.get(m.name, 0) + 1
        if p.rec.role in ("main", "subagent"):
            task_q.setdefault(f"{p.rec.session_id}|{p.rec.task_id}", []).append(truth(p, m))
    if keepalive is not None:
        cost += keepalive.finish(env, strategy)
    per_task = {k: statistics.fmean(v) for k, v in task_q.items()}
    q = statistics.fmean(per_task.values()) if per_task else 0.0
    lats.sort()
    dec = None
    if isinstance(strategy, RouterStrategy):
        dec = {}
        for h in strategy.decisions:
            dec[h] = dec.get(h, 0) + 1
    res = RunResult(strategy.name, cost, q, read / prompt if prompt else 0.0, write,
                    _pct(lats, 0.5), _pct(lats, 0.95), len(prepared), models, objective,
                    truth.source, dec, per_task=per_task)
    if keepalive is not None:
        res.keepalive = {"refreshes": keepalive.refreshes, "declined": keepalive.declined,
                         "kept_warm": keepalive.kept, "cost": round(keepalive.cost, 6)}
    return res


def paired_se(a: RunResult, ref: RunResult) -> float | None:
    """Standard error of ``a.quality - ref.quality``, paired over their tasks
    (both ran the same traces): how much of a quality gap is task sampling."""
    keys = a.per_task.keys() & ref.per_task.keys()
    if len(keys) < 2:
        return None
    d = [a.per_task[k] - ref.per_task[k] for k in keys]
    return statistics.stdev(d) / len(d) ** 0.5


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]
