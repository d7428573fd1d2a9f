"""Plot a run's curves: python viz/plot.py run=<run dir>."""

from attnlab.cli import plot

if __name__ == "__main__":
    plot()
