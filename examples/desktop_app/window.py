"""The chat window: base and adapters on the left, the conversation on the right."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QThreadPool, Signal
from PySide6.QtWidgets import (
    QCheckBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QMainWindow, QProgressBar,
    QPushButton, QTableWidget, QTextEdit, QVBoxLayout, QWidget,
)

from edge_lora import Completion, Runtime, engine_summary

from worker import ChatJob, LoadJob


class ChatWindow(QMainWindow):
    """A chat over one base GGUF with any mix of the adapters of a folder."""

    answered = Signal(object)  # each finished Completion (for tests and embedding apps)
    base_loaded = Signal()

    def __init__(self, adapter_dir: Path | None = None, n_ctx: int = 4096, max_tokens: int = 512) -> None:
        super().__init__()
        self.setWindowTitle("edge-lora chat")
        self.resize(980, 640)
        self.rt: Runtime | None = None
        self.job: ChatJob | None = None
        self.messages: list[dict[str, str]] = []
        self.adapter_dir, self.n_ctx, self.max_tokens = adapter_dir, n_ctx, max_tokens
        self.pool = QThreadPool.globalInstance()

        # left: base file, adapters with an enable box and a scale each
        self.open_btn = QPushButton("Open base GGUF...")
        self.open_btn.clicked.connect(self._choose_base)
        self.load_bar = QProgressBar()
        self.adapters = QTableWidget(0, 2)
        self.adapters.setHorizontalHeaderLabels(["adapter", "scale"])
        self.adapters.horizontalHeader().setStretchLastSection(True)
        left = QVBoxLayout()
        for w in (self.open_btn, self.load_bar, QLabel("Adapters (tick to use, any mix):"), self.adapters):
            left.addWidget(w)

        # right: the conversation, the input line, Send and Stop
        self.view = QTextEdit(readOnly=True)
        self.input = QLineEdit(placeholderText="Type a message and press Enter")
        self.input.returnPressed.connect(self.send)
        self.send_btn = QPushButton("Send")
        self.send_btn.clicked.connect(self.send)
        self.stop_btn = QPushButton("Stop", enabled=False)
        self.stop_btn.clicked.connect(self.stop)
        row = QHBoxLayout()
        for w in (self.input, self.send_btn, self.stop_btn):
            row.addWidget(w)
        right = QVBoxLayout()
        right.addWidget(self.view)
        right.addLayout(row)

        body = QHBoxLayout()
        body.addLayout(left, 1)
        body.addLayout(right, 3)
        central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)
        self.statusBar().showMessage("no base loaded")
        self._set_busy(True)

    # -- base and adapters -----------------------------------------------------------------
    def _choose_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Base model", "", "GGUF (*.gguf)")
        if path:
            self.load_base(path)

    def load_base(self, path: str) -> None:
        """Load ``path`` on a worker thread; the progress bar follows llama.cpp's progress."""
        self.statusBar().showMessage(f"loading {Path(path).name}...")
        job = LoadJob(path, self.n_ctx)
        job.signals.progress.connect(lambda f: self.load_bar.setValue(int(f * 100)))
        job.signals.loaded.connect(self._on_loaded)
        job.signals.failed.connect(lambda msg: self.statusBar().showMessage(f"cannot load: {msg}"))
        self.pool.start(job)

    def _on_loaded(self, rt: Runtime) -> None:
        if self.rt is not None:
            self.rt.close()
        self.rt = rt
        self.adapters.setRowCount(0)
        for path in sorted(self.adapter_dir.glob("*.gguf")) if self.adapter_dir else []:
            try:
                rt.load_adapter(path.stem, path)  # checked against the base; a bad file is skipped
            except Exception as exc:  # noqa: BLE001 - shown, not fatal
                self.statusBar().showMessage(f"skipped {path.name}: {exc}")
                continue
            self._add_adapter_row(path.stem)
        self._set_busy(False)
        self._update_status()
        self.base_loaded.emit()

    def _add_adapter_row(self, name: str) -> None:
        r = self.adapters.rowCount()
        self.adapters.insertRow(r)
        self.adapters.setCellWidget(r, 0, QCheckBox(name))
        scale = QDoubleSpinBox(minimum=-4.0, maximum=4.0, singleStep=0.1, value=1.0)
        self.adapters.setCellWidget(r, 1, scale)

    def set_adapter(self, name: str, enabled: bool, scale: float = 1.0) -> None:
        """Tick (or untick) an adapter and set its scale, as a user would."""
        for r in range(self.adapters.rowCount()):
            box = self.adapters.cellWidget(r, 0)
            if box.text() == name:
                box.setChecked(enabled)
                self.adapters.cellWidget(r, 1).setValue(scale)

    def selected_adapters(self) -> dict[str, float]:
        out = {}
        for r in range(self.adapters.rowCount()):
            box, scale = self.adapters.cellWidget(r, 0), self.adapters.cellWidget(r, 1)
            if box.isChecked():
                out[box.text()] = scale.value()
        return out

    # -- chat ---------------------------------------------------------------------------------
    def send(self) -> None:
        text = self.input.text().strip()
        if not text or self.rt is None or self.job is not None:
            return
        self.input.clear()
        self.messages.append({"role": "user", "content": text})
        self.view.append(f"<b>You:</b> {text}")
        mix = self.selected_adapters()
        self.view.append(f"<b>Assistant</b> <i>({', '.join(f'{n} {s:g}' for n, s in mix.items()) or 'base'})</i>: ")
        self.job = ChatJob(self.rt, self.messages, mix, self.max_tokens)
        self.job.signals.piece.connect(self._on_piece)
        self.job.signals.finished.connect(self._on_finished)
        self.job.signals.failed.connect(self._on_failed)
        self._set_busy(True)
        self.pool.start(self.job)

    def stop(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def _on_piece(self, piece: str) -> None:
        cursor = self.view.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText(piece)  # plain text: a model's output is never interpreted as HTML
        self.view.setTextCursor(cursor)

    def _on_finished(self, result: Completion) -> None:
        self.messages.append({"role": "assistant", "content": result.text})
        if result.finish_reason == "cancelled":
            self.view.append("<i>(stopped)</i>")
        self.job = None
        self._set_busy(False)
        self._update_status(result)
        self.answered.emit(result)

    def _on_failed(self, message: str) -> None:
        self.view.append(f"<i>error: {message}</i>")
        self.messages.pop()
        self.job = None
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.send_btn.setEnabled(not busy and self.rt is not None)
        self.stop_btn.setEnabled(busy and self.job is not None)
        self.open_btn.setEnabled(self.job is None)  # never swap the base under a running answer

    def _update_status(self, result: Completion | None = None) -> None:
        m = self.rt.memory()
        speed = f"{result.tokens_per_second:.1f} tok/s" if result else "-"
        self.statusBar().showMessage(f"{engine_summary()}  |  {speed}  |  memory {m.total / 2**20:.0f} MiB "
                                     f"(model {m.model_mapped / 2**20:.0f}, KV {m.kv_per_context / 2**20:.0f}, "
                                     f"adapters {m.adapters / 2**20:.1f})")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.stop()
        self.pool.waitForDone(5000)
        if self.rt is not None:
            self.rt.close()
        super().closeEvent(event)
