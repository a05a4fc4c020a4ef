"""Inputs a run makes for itself before training: a data set written from a generator, an encoder
pretrained on it, pre-encoded features. A config lists them under ``prepare``;
``python -m jf_lightning prepare -c <config>`` makes them, and ``fit`` / ``validate`` refuse to start
while one is missing, naming it and that command. Preparing is never a side effect of training."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class UserInputError(ValueError):
    """Something the user wrote or must make is wrong or missing; the CLI prints it as one line."""


class PreparedInput(ABC):
    """One input that a command can make: where it goes, whether it is there, and how to make it."""

    @property
    @abstractmethod
    def path(self) -> Path:
        """Where the input lives once prepared."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether ``path`` already holds this input, made with these settings."""

    @abstractmethod
    def prepare(self) -> None:
        """Make the input at ``path`` (idempotent: nothing is redone when it is ready), with progress."""


def check_ready(inputs: list[PreparedInput], prepare_command: str) -> None:
    """A one-line :class:`UserInputError` naming the first missing input and the command that makes it."""
    for item in inputs:
        if not item.ready():
            raise UserInputError(
                f"{item.path} is missing ({type(item).__name__} of the config's `prepare` list): "
                f"make it first with `{prepare_command}`"
            )
