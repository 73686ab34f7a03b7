"""Test-wide settings.

The tests use tiny tensors, for which one CPU thread is faster than several and immune to other
processes competing for the cores; the environment variable carries the same choice into the
command-line runs that tests start as subprocesses.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread setting, which torch reads when it starts)

torch.set_num_threads(1)
