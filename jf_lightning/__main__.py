"""``python -m jf_lightning ...`` is the ``jf`` command. The commands that need neither Lightning nor a
training config (``compare``, ``generate``, ``chat``, ``eval``, ``shards``, ...) start without importing
the CLI, whose Lightning and jsonargparse imports take most of its start-up; everything else is the
LightningCLI (``fit``, ``validate``, ``prepare``, ...)."""

import sys


def _compare(argv: list[str]) -> None:
    from jf_lightning.compare import main

    main(argv)


def _upload_spool(argv: list[str]) -> None:
    from jf_lightning.callbacks.tracking import main

    main(argv)


def _shards(argv: list[str]) -> None:
    from jf_lightning.commands.shards import main

    main(argv)


def _generate(argv: list[str]) -> None:
    from jf_lightning.commands.generate import main

    main(argv)


def _chat(argv: list[str]) -> None:
    from jf_lightning.commands.chat import main

    main(argv)


def _eval(argv: list[str]) -> None:
    from jf_lightning.commands.evaluate import main

    main(argv)


# name -> runner of ``python -m jf_lightning <name> <argv...>``; each imports its module only when run.
COMMANDS = {
    "generate": _generate,
    "chat": _chat,
    "eval": _eval,
    "compare": _compare,
    "upload-spool": _upload_spool,
    "shards": _shards,
}


def main() -> None:
    command = COMMANDS.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if command is not None:
        command(sys.argv[2:])
    else:
        from jf_lightning.cli import main as cli

        cli()


if __name__ == "__main__":
    main()
