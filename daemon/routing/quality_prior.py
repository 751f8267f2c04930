"""Quality prediction for routing: the learned model (``quality.py``, trained
offline on public router-outcome data) where its artifact loads, else each
model's catalog prior. ``heads`` names, per pool model, the training-data model
it *is* (e.g. ``"llmrouter/qwen2.5-7b-instruct"``): such a model is predicted
by that model's own learned head on the data's scale (``switchman eval`` uses
this when its tasks' outcomes come from that data)."""

from __future__ import annotations

import logging
from typing import Any

from switchman_daemon.models import ModelInfo

log = logging.getLogger("switchman.routing")


class QualityPredictor:
    def __init__(self, use_learned: bool = True, heads: dict[str, str] | None = None) -> None:
        self.heads = dict(heads or {})
        self._qm: Any = None
        self._feat_key: str | None = None
        self._feats: Any = None
        if use_learned:
            try:
                from switchman_daemon.routing.features import request_features
                from switchman_daemon.routing.quality import QualityModel

                self._qm = QualityModel.load()
                self._features = request_features
            except Exception as e:  # the prior still routes sensibly
                log.warning("learned quality model unavailable (%s); using catalog priors", e)
                self._qm = None

    @property
    def learned(self) -> bool:
        return self._qm is not None

    def predict(self, text: str, m: ModelInfo) -> float:
        """P(the model does well on this task), in [0, 1]."""
        if self._qm is None:
            return m.quality
        key = self.heads.get(m.name) if self.heads else None
        if key is not None and key not in self._qm.heads:
            key = None
        if not text:
            return self._qm.train_acc[key] if key is not None else m.quality
        if text is not self._feat_key:  # features once per request, not per candidate
            self._feat_key = text
            self._feats = self._features(text[:8000])
        if key is not None:
            return float(self._qm.predict_data_model(self._feats, key))
        return float(self._qm.predict(self._feats, m))
