"""One reader per raw format; each returns a ``Prepared`` dataset ready to be written.

Every reader has the signature ``read(raw: Path, name: str, hint: str | None) -> Prepared``;
``hint`` is the dataset's name in its source (Amazon category, NineRec folder), when known.
"""

from fedvlr_sim.datasets.formats import amazon, mmrec, movielens, ninerec

READERS = {"mmrec": mmrec.read, "ninerec": ninerec.read, "amazon": amazon.read, "movielens": movielens.read}
