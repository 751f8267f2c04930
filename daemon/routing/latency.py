"""Latency prediction: time to first token from uncached input size, plus output
at the model's speed, learned online from the ledger's observed figures."""

from __future__ import annotations

from dataclasses import dataclass, field

from switchman_daemon.models import ModelInfo


@dataclass(slots=True)
class _Fit:
    """Running least squares for ttft_ms = a + b * uncached_tokens."""

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0
    tps: float = 0.0  # output tokens per second (EWMA)

    def add(self, x: float, y: float, decay: float = 0.98) -> None:
        self.n = self.n * decay + 1
        self.sx = self.sx * decay + x
        self.sy = self.sy * decay + y
        self.sxx = self.sxx * decay + x * x
        self.sxy = self.sxy * decay + x * y

    def coef(self) -> tuple[float, float] | None:
        if self.n < 3:
            return None
        den = self.n * self.sxx - self.sx * self.sx
        if den <= 1e-9:
            return self.sy / self.n, 0.0
        b = max(0.0, (self.n * self.sxy - self.sx * self.sy) / den)
        a = max(0.0, (self.sy - b * self.sx) / self.n)
        return a, b


def _prior(m: ModelInfo) -> tuple[float, float, float]:
    """(ttft base ms, ms per uncached token, output tok/s) before observations:
    pricier models are slower, a rough but monotone prior."""
    tier = m.prices.output
    base = 300.0 + 25.0 * tier
    per_tok = 1000.0 / max(20_000.0, 150_000.0 - 4_000.0 * tier)
    tps = max(30.0, 180.0 - 5.0 * tier)
    return base, per_tok, tps


@dataclass
class LatencyModel:
    fits: dict[str, _Fit] = field(default_factory=dict)

    def predict_ms(self, m: ModelInfo, uncached_tokens: int, output_tokens: float) -> float:
        base, per_tok, tps = _prior(m)
        f = self.fits.get(m.name)
        if f is not None:
            c = f.coef()
            if c is not None:
                base, per_tok = c
            if f.tps > 0:
                tps = f.tps
        return base + per_tok * uncached_tokens + 1000.0 * output_tokens / tps

    def ttft_ms(self, m: ModelInfo, uncached_tokens: int) -> float:
        return self.predict_ms(m, uncached_tokens, 0.0)

    def observe(self, model: str, uncached_tokens: int, ttfb_ms: float | None,
                latency_ms: float | None, output_tokens: int, stream: bool) -> None:
        if ttfb_ms is None:
            return
        f = self.fits.setdefault(model, _Fit())
        if stream:
            f.add(float(uncached_tokens), ttfb_ms)
            if latency_ms and output_tokens > 20 and latency_ms > ttfb_ms + 1:
                rate = output_tokens / ((latency_ms - ttfb_ms) / 1000.0)
                f.tps = rate if f.tps == 0 else 0.8 * f.tps + 0.2 * rate
