"""Model pool: every model with its prices (input, output, cache read, cache
write 5 min / 1 h), context window, capabilities and pools, an enabled toggle,
and a form to add a model from the catalog or an OpenAI-compatible endpoint."""

from __future__ import annotations

import re
from typing import Any

import tomli_w
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from switchman_gui.connection import Connection
from switchman_gui.widgets import Page, item, table, tokens
from switchman_shared.admin_client import AdminClient
from switchman_shared.admin_errors import AdminError
from switchman_shared.catalog import load_catalog
from switchman_shared.proto_gen.switchman.v1 import models_pb2

HEADERS = ["On", "Model", "Provider", "Upstream id", "Input", "Output", "Cache read",
           "Write 5m", "Write 1h", "Context", "Capabilities", "Quality", "Pools"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _price(v: float) -> str:
    return f"${v:g}"


def endpoint_provider_toml(name: str, base_url: str, with_key: bool) -> str:
    """The config delta that adds an OpenAI-compatible provider."""
    entry = {"kind": "openai-compatible", "base_url": base_url,
             "key": f"keyring:{name}" if with_key else ""}
    return tomli_w.dumps({"providers": {name: entry}})


def _money_spin(v: float = 0.0) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(0, 1000)
    s.setDecimals(3)
    s.setPrefix("$")
    s.setSuffix(" /M")
    s.setValue(v)
    return s


class AddModelBox(QGroupBox):
    """Add a model: from the price catalog, or from an OpenAI-compatible endpoint."""

    def __init__(self, page: ModelsPage) -> None:
        super().__init__("Add a model")
        self.page = page
        lay = QVBoxLayout(self)
        self.mode = QComboBox()
        self.mode.addItems(["From the catalog", "OpenAI-compatible endpoint"])
        self.mode.setAccessibleName("Source")
        lay.addWidget(self.mode)
        self.stack = QStackedWidget()
        lay.addWidget(self.stack)
        self.mode.currentIndexChanged.connect(self.stack.setCurrentIndex)

        cat = QWidget()
        f = QFormLayout(cat)
        f.setContentsMargins(0, 0, 0, 0)
        self.cat_id = QComboBox()
        self.cat_id.setEditable(True)
        self.cat_id.addItems(sorted({m.id for m in load_catalog().values()}))
        self.cat_provider = QComboBox()
        self.cat_name = QLineEdit()
        self.cat_name.setPlaceholderText("defaults to the catalog id")
        f.addRow("Catalog id", self.cat_id)
        f.addRow("Provider", self.cat_provider)
        f.addRow("Name in the pool", self.cat_name)
        self.stack.addWidget(cat)

        ep = QWidget()
        g = QGridLayout(ep)
        g.setContentsMargins(0, 0, 0, 0)
        self.ep_provider = QLineEdit()
        self.ep_provider.setPlaceholderText("e.g. deepseek")
        self.ep_url = QLineEdit()
        self.ep_url.setPlaceholderText("https://api.example.com/v1")
        self.ep_key = QLineEdit()
        self.ep_key.setEchoMode(QLineEdit.EchoMode.Password)
        self.ep_key.setPlaceholderText("optional; stored in the OS keyring by the daemon")
        self.ep_model = QLineEdit()
        self.ep_model.setPlaceholderText("the endpoint's model id")
        self.ep_in, self.ep_out, self.ep_read = _money_spin(), _money_spin(), _money_spin()
        self.ep_ctx = QSpinBox()
        self.ep_ctx.setRange(1024, 10_000_000)
        self.ep_ctx.setSingleStep(1024)
        self.ep_ctx.setValue(128_000)
        for i, (label, w) in enumerate((
                ("Provider name", self.ep_provider), ("Base URL", self.ep_url),
                ("API key", self.ep_key), ("Model id", self.ep_model),
                ("Input price", self.ep_in), ("Output price", self.ep_out),
                ("Cache read price", self.ep_read), ("Context window", self.ep_ctx))):
            g.addWidget(QLabel(label), i // 2, (i % 2) * 2)
            g.addWidget(w, i // 2, (i % 2) * 2 + 1)
        self.stack.addWidget(ep)

        row = QHBoxLayout()
        self.to_pool = QCheckBox("Add to the default pool")
        self.to_pool.setChecked(True)
        self.add_btn = QPushButton("&Add model")
        self.add_btn.clicked.connect(self.add)
        row.addWidget(self.to_pool)
        row.addStretch(1)
        row.addWidget(self.add_btn)
        lay.addLayout(row)

    def set_providers(self, names: list[str]) -> None:
        cur = self.cat_provider.currentText()
        self.cat_provider.clear()
        self.cat_provider.addItems(names)
        if cur:
            self.cat_provider.setCurrentText(cur)

    def add(self) -> None:
        to_pool = self.to_pool.isChecked()
        if self.mode.currentIndex() == 0:
            cat = self.cat_id.currentText().strip()
            name = self.cat_name.text().strip() or cat
            spec = models_pb2.ModelSpec(name=name, provider=self.cat_provider.currentText(),
                                        catalog=cat, upstream_id=cat)
            provider_toml, key = "", ""
        else:
            prov = self.ep_provider.text().strip()
            url = self.ep_url.text().strip()
            model = self.ep_model.text().strip()
            key = self.ep_key.text().strip()
            self.ep_key.clear()
            if not (_NAME.match(prov) and url.startswith(("http://", "https://")) and model):
                self.page.conn.report(AdminError(
                    "invalid_argument", "give a provider name (letters, digits, - _ .), an "
                    "http(s) base URL and a model id"), "add the model")
                return
            name = model if _NAME.match(model) else \
                f"{prov}-{re.sub(r'[^A-Za-z0-9._-]', '-', model)}"
            spec = models_pb2.ModelSpec(
                name=name, provider=prov, upstream_id=model, input=self.ep_in.value(),
                output=self.ep_out.value(), cache_read=self.ep_read.value(),
                cache_write_5m=self.ep_in.value(), cache_write_1h=self.ep_in.value(),
                context_window=self.ep_ctx.value(), tools=True)
            provider_toml = endpoint_provider_toml(prov, url, bool(key))
        self.page.upsert(spec, provider_toml, key, to_pool)
        del key


class ModelsPage(Page):
    title = "Model pool"
    hint = "Prices are USD per million tokens. Untick a model to take it out of routing " \
           "without deleting it."

    def __init__(self, conn: Connection, parent: QWidget | None = None) -> None:
        super().__init__(conn, parent)
        self.models: list[Any] = []
        self.table = table(HEADERS)
        self.table.setAccessibleName("Models")
        self.table.itemChanged.connect(self._item_changed)
        self.body.addWidget(self.table, 1)
        self.add_box = AddModelBox(self)
        self.body.addWidget(self.add_box)

    def refresh(self) -> None:
        def fetch(c: AdminClient) -> tuple[list[Any], list[str]]:
            return c.list_models(include_disabled=True), [p.name for p in c.list_providers()]

        self.conn.call(fetch, self._show, action="list models")

    def _show(self, result: tuple[list[Any], list[str]]) -> None:
        self.models, providers = result
        self.add_box.set_providers(providers)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.models))
        for r, m in enumerate(self.models):
            on = QTableWidgetItem()
            on.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled
                        | Qt.ItemFlag.ItemIsSelectable)
            on.setCheckState(Qt.CheckState.Checked if m.enabled else Qt.CheckState.Unchecked)
            on.setData(Qt.ItemDataRole.UserRole, m.name)
            caps = ", ".join(n for n in ("tools", "vision", "thinking")
                             if getattr(m.capabilities, n)) or "—"
            p = m.prices
            cells = [on, item(m.name), item(m.provider), item(m.upstream_id),
                     item(_price(p.input), align_right=True),
                     item(_price(p.output), align_right=True),
                     item(_price(p.cache_read), align_right=True),
                     item(_price(p.cache_write_5m), align_right=True),
                     item(_price(p.cache_write_1h), align_right=True),
                     item(tokens(m.context_window), align_right=True), item(caps),
                     item(f"{m.quality:.2f}", align_right=True), item(", ".join(m.pools))]
            for c, it in enumerate(cells):
                self.table.setItem(r, c, it)
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()

    def _item_changed(self, it: QTableWidgetItem) -> None:
        if it.column() != 0:
            return
        name = it.data(Qt.ItemDataRole.UserRole)
        enabled = it.checkState() == Qt.CheckState.Checked
        self.set_enabled(name, enabled)

    def set_enabled(self, name: str, enabled: bool) -> None:
        def done(m: Any) -> None:
            self.conn.info(f"{m.name} {'enabled' if m.enabled else 'disabled'}.")
            self.refresh()

        self.conn.call(lambda c: c.call(c.models.SetModelEnabled, models_pb2.SetModelEnabledRequest(
            name=name, enabled=enabled)), done, action=f"change {name}",
            on_err=lambda _e: self.refresh())

    def upsert(self, spec: Any, provider_toml: str, key: str, to_pool: bool) -> None:
        """Add/replace a model (after adding its provider, and its key, if given)."""
        def run(c: AdminClient, key: str = key) -> Any:
            if provider_toml:
                c.import_config(provider_toml)
            if key:
                c.set_key(spec.provider, key)
            model = c.call(c.models.UpsertModel, models_pb2.UpsertModelRequest(model=spec))
            if to_pool:
                pools = c.call(c.models.ListPools, models_pb2.ListPoolsRequest())
                target = next((p for p in pools.pools if p.name == pools.default_pool), None)
                if target is not None and model.name not in target.models:
                    c.call(c.models.UpsertPool, models_pb2.UpsertPoolRequest(pool=models_pb2.Pool(
                        name=target.name, models=[*target.models, model.name],
                        default=True)))
            return model

        def done(m: Any) -> None:
            self.conn.info(f"Added {m.name} ({m.provider}).")
            self.refresh()

        self.conn.call(run, done, action=f"add the model {spec.name}")
