"""``python -m scripts.bench``: the benchmark's command line (:mod:`scripts.bench.cli`)."""

from scripts.bench.cli import main

raise SystemExit(main())
