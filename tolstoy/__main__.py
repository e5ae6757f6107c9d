"""``python -m tolstoy`` is the ``tolstoy`` command."""

from tolstoy.cli import main

main()
