"""Running nnU-Net's commands for the training benchmark: one subprocess per step, every command logged.

:class:`CommandRunner` runs a command with the benchmark's environment, writes its output to the
step's log file, appends the command (with the environment variables that matter) to
``OUT/commands.log`` and raises :class:`StepFailed`, with the end of the output, when it exits with
an error. :func:`nnunet_tool` finds nnU-Net's command-line tools of the running Python environment.
"""
from __future__ import annotations

import ast
import inspect
import re
import shlex
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Callable, List, Mapping, Optional

#: environment variables a benchmark command depends on (logged with every command)
LOGGED_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_def_n_proc", "nnUNet_n_proc_DA",
              "nnUNet_compile", "CUDA_VISIBLE_DEVICES", "nnUNet_extTrainer", "OMP_WAIT_POLICY")

#: the line nnUNetv2_train prints at the start of each epoch (drives the progress bar)
_EPOCH_LINE = re.compile(r": Epoch (\d+)\s*$")


class StepFailed(RuntimeError):
    """An nnU-Net command of a job exited with an error."""


def nnunet_tool(name: str) -> str:
    """The path of an nnU-Net command installed beside this Python (a virtual environment that was not
    activated has its commands off ``PATH``), else the bare name, looked up on ``PATH``."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else name


@lru_cache(maxsize=1)
def nnunet_default_epochs() -> int:
    """The number of epochs ``nnUNetTrainer`` trains (``self.num_epochs`` in its ``__init__``).

    Read from nnU-Net's source, so that a trainer name without a budget token shows the right
    epoch count in the progress bar; nnU-Net sets it in ``__init__``, not as a class attribute.

    >>> nnunet_default_epochs()
    1000
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    tree = ast.parse(textwrap.dedent(inspect.getsource(nnUNetTrainer.__init__)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.Constant)
                and ast.unparse(node.targets[0]) == "self.num_epochs" and isinstance(node.value.value, int)):
            return node.value.value
    raise RuntimeError("nnUNetTrainer.__init__ sets no constant self.num_epochs; this nnU-Net version is not supported")


class CommandRunner:
    """Runs the benchmark's commands in ``out`` with ``env``; logs them to ``out/commands.log``.

    Args:
        out: the benchmark's output folder (the working directory of every command).
        env: the environment of every command (``extra_env`` of :meth:`run` is added on top).
        progress_bars: show a tqdm bar over the epochs of a training (off when jobs run at once).
    """

    def __init__(self, out: Path, env: Mapping[str, str], progress_bars: bool = True):
        self.out = Path(out)
        self.env = dict(env)
        self.progress_bars = progress_bars
        self._lock = threading.Lock()

    @property
    def log_file(self) -> Path:
        return self.out / "commands.log"

    def log(self, text: str) -> None:
        """Appends ``text`` to ``commands.log`` (one writer at a time)."""
        with self._lock:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.log_file, "a", encoding="utf-8") as f:
                f.write(text.rstrip("\n") + "\n")

    def log_in_process(self, tag: str, cmd: List[str]) -> None:
        """Logs a step done inside this process as the command that would do the same."""
        self.log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} [{tag}] (in process)\n{shlex.join(cmd)}")

    def run(self, cmd: List[str], extra_env: Mapping[str, str], log_file: Path, tag: str,
            epochs: Optional[int] = None) -> float:
        """Runs one command, its output to ``log_file``, the command to ``commands.log``; returns seconds.

        Args:
            cmd: the command and its arguments.
            extra_env: variables set on top of the runner's environment for this command.
            log_file: the file that receives the command's output (stdout and stderr).
            tag: the job's name in progress lines and in ``commands.log``.
            epochs: the number of epochs of a training (a progress bar over them), None for other steps.

        Raises:
            StepFailed: the command exited with an error (the message holds the end of its output), or
                it was not found.
        """
        env = {**self.env, **extra_env}
        shown_env = " ".join(f"{k}={shlex.quote(env[k])}" for k in LOGGED_ENV if env.get(k))
        self.log(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} [{tag}]\n{shown_env} {shlex.join(cmd)}")
        log_file.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        tail: deque = deque(maxlen=40)
        on_line: Callable[[str], None] = tail.append
        bar = None
        if epochs and self.progress_bars:
            from tqdm import tqdm
            bar = tqdm(total=epochs, desc=f"  {tag}: epochs", unit="epoch", disable=None, leave=False)

            def on_line(line: str) -> None:
                tail.append(line)
                m = _EPOCH_LINE.search(line)
                if m:
                    bar.update(int(m.group(1)) - bar.n)
        proc = None
        try:
            with open(log_file, "w", encoding="utf-8") as log:
                log.write(f"# {shown_env} {shlex.join(cmd)}\n")
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        cwd=str(self.out), bufsize=1)
                for line in proc.stdout:
                    log.write(line)
                    on_line(line)
                rc = proc.wait()
        except FileNotFoundError:
            raise StepFailed(f"{cmd[0]} not found: is nnunetv2 installed in this environment?") from None
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if bar is not None:
                bar.close()
        seconds = time.time() - start
        self.log(f"# [{tag}] exit {rc} after {seconds:.1f} s")
        if rc != 0:
            raise StepFailed(f"{tag}: {cmd[0]} exited with {rc} (log: {log_file}):\n" + "".join(tail)[-3000:])
        return seconds
