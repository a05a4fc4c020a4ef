"""``python -m jf_lightning ...`` is the ``jf`` command. ``compare`` reads MLflow only, so it starts
without importing the CLI and with it Lightning and torch, which take most of the CLI's start-up."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        from jf_lightning.compare import main as compare

        compare(sys.argv[2:])
    else:
        from jf_lightning.cli import main

        main()
