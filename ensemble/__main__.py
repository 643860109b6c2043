from __future__ import annotations

from ensemble.cli import main

raise SystemExit(main())
