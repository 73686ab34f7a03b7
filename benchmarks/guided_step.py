"""``python -m benchmarks.guided_step``: the guided-step benchmark, as ``mtransfer bench`` (see
``mtransfer.bench.guided_step`` and BENCHMARKS.md)."""

from mtransfer.bench.guided_step import main
from mtransfer.bench.measure import run_script

if __name__ == "__main__":
    run_script(main)
