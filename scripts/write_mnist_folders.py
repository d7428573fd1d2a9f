"""Write MNIST (the four idx.gz files) as PNG class folders, the layout of `data=image_folder`:

    python scripts/write_mnist_folders.py [mnist=<dir with the idx.gz files>] [out=<dir>]

Defaults: mnist=$ATTNLAB_DATA_DIR/mnist, out=$ATTNLAB_DATA_DIR/mnist_folders (ATTNLAB_DATA_DIR defaults to data/).
Writes out/train/<digit>/<index>.png (60,000) and out/test/<digit>/<index>.png (10,000); `experiment=mnist_folders`
trains on them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from attnlab.cli import script_fail, script_settings
from attnlab.errors import AttnlabError

DATA = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))


def main(argv: list[str]) -> None:
    args = script_settings(argv, {"mnist": str(DATA / "mnist"), "out": str(DATA / "mnist_folders")},
                           usage="python scripts/write_mnist_folders.py [mnist=<dir>] [out=<dir>]")
    from attnlab.data.writers import write_idx_folders

    try:
        counts = write_idx_folders(Path(args["mnist"]), Path(args["out"]))
    except (AttnlabError, OSError) as err:
        script_fail(str(err))
    logging.getLogger(__name__).info("wrote %s: %s images", args["out"], counts)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
