"""``python -m jf_lightning ...`` is the ``jf`` command."""

from jf_lightning.cli import main

if __name__ == "__main__":
    main()
