"""Training: one loop for every task (``loop``), the task interface and the language-model
task (``task``), run directories with atomic checkpoints and exact resume (``state``), the
regime monitor (``monitor``), language-model and image runs (``language``, ``images``), and the
seed-grid experiments as data (``experiment``: the description; ``grid``: the one runner;
``runs``: its run folders; ``summary``: the one summary writer; ``seeds``: their statistics).
The descriptions themselves are in :mod:`tokendyn.experiments`."""

from .loop import TrainConfig, TrainResult, lr_at, param_groups, train
from .monitor import RegimeMonitor, plot_monitor
from .task import LanguageModelTask, Task

__all__ = ["TrainConfig", "TrainResult", "train", "lr_at", "param_groups", "Task", "LanguageModelTask",
           "RegimeMonitor", "plot_monitor"]
