"""Plot a run's curves, a sweep's results or a data report: python viz/plot.py run=<run dir> | sweep=<sweep dir> | data=<data config>."""

from attnlab.cli import plot

if __name__ == "__main__":
    plot()
