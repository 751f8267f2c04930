"""``python -m switchman_gui``: open the console."""

from switchman_gui.app import main

raise SystemExit(main())
