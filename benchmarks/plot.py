"""``python -m benchmarks.plot REPORT.json OUT.png``: redraw a benchmark report's split chart
(``mtransfer.bench.plot``)."""

import sys

from mtransfer.bench.plot import plot_split
from mtransfer.files import read_json

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.plot REPORT.json OUT.png")
    plot_split(read_json(sys.argv[1]), sys.argv[2])
