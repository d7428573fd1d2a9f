"""Write IMDB's reviews as a four-class CSV from their star ratings, the layout of `data=text_classification`:

    python scripts/write_imdb_rating4.py [imdb=<dir with train/test.jsonl.gz>] [out=<dir>]

Classes: very negative (1-2 stars), negative (3-4), positive (7-8), very positive (9-10). Defaults: imdb=
$ATTNLAB_DATA_DIR/imdb, out=$ATTNLAB_DATA_DIR/imdb_rating4 (ATTNLAB_DATA_DIR defaults to data/). Writes
out/train.csv and out/test.csv (columns text, rating, label), the official 25,000 / 25,000 split;
`experiment=imdb_rating4` trains on them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from attnlab.cli import script_fail, script_settings
from attnlab.errors import AttnlabError

DATA = Path(os.environ.get("ATTNLAB_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))


def main(argv: list[str]) -> None:
    args = script_settings(argv, {"imdb": str(DATA / "imdb"), "out": str(DATA / "imdb_rating4")},
                           usage="python scripts/write_imdb_rating4.py [imdb=<dir>] [out=<dir>]")
    from attnlab.data.writers import write_imdb_rating4

    try:
        counts = write_imdb_rating4(Path(args["imdb"]), Path(args["out"]))
    except (AttnlabError, OSError) as err:
        script_fail(str(err))
    logging.getLogger(__name__).info("class counts: %s", counts)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(sys.argv[1:])
