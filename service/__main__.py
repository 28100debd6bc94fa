"""``python -m geowarn.service`` is the ``geowarn`` command."""

from geowarn.service.cli import main

raise SystemExit(main())
