"""Plot a run's curves or a sweep's results: python viz/plot.py run=<run dir> | sweep=<sweep dir>."""

from attnlab.cli import plot

if __name__ == "__main__":
    plot()
