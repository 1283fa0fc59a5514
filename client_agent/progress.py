"""Progress bars for transfers and local epochs (rich), shown only on an interactive terminal.

Under systemd, in a pipe, or with `--log-format json`, `Progress(enabled=False)` makes every bar a
no-op, so log files hold the per-round summary line and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    def __init__(self, enabled: bool, console: Any = None) -> None:
        self.enabled = enabled
        self.console = console

    def _bar(self, *columns: Any) -> Any:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            *columns,
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )

    @contextmanager
    def transfer(self, description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
        """Yields `advance(n_bytes)` for a download or upload of `total_bytes`."""
        if not self.enabled:
            yield lambda n: None
            return
        from rich.progress import DownloadColumn, TransferSpeedColumn

        with self._bar(DownloadColumn(), TransferSpeedColumn()) as bar:
            task = bar.add_task(description, total=total_bytes)
            yield lambda n: bar.advance(task, n)

    def keras_callbacks(self, description: str) -> list[Any]:
        """A Keras callback showing epochs and batches of `model.fit` (empty when disabled)."""
        if not self.enabled:
            return []
        from rich.progress import MofNCompleteColumn

        from client_agent.keras_model import import_keras

        keras = import_keras()
        bar = self._bar(MofNCompleteColumn(), _LossColumn())

        class EpochBar(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                bar.start()
                self.epochs = self.params.get("epochs", 1)
                self.task = bar.add_task(description, total=self.epochs * (self.params.get("steps") or 1))

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                bar.update(self.task, description=f"{description}, epoch {epoch + 1}/{self.epochs}")

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                bar.update(self.task, advance=1, loss=(logs or {}).get("loss"))

            def on_train_end(self, logs: Any = None) -> None:
                bar.stop()

        return [EpochBar()]


def _LossColumn() -> Any:
    """A column showing the last batch's loss (a class built on first use: rich is imported lazily)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class LossColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            loss = task.fields.get("loss")
            return Text(f"loss {float(loss):.4f}" if loss is not None else "")

    return LossColumn()
