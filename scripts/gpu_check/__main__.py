"""``python -m scripts.gpu_check``: the GPU check (:mod:`scripts.gpu_check.cli`)."""

from scripts.gpu_check.cli import main

raise SystemExit(main())
