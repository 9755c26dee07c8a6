"""Errors a user can cause (the CLI prints them as one line; everything else is a bug), and the
notices hymoe gives once per process when it takes a slower path."""
import logging

_said: set[str] = set()


class HymoeError(Exception):
    """A problem with the user's input (path, file, request): the message names the thing."""


def say_once(message: str) -> None:
    """Log `hymoe: message` the first time this process says it."""
    if message not in _said:
        _said.add(message)
        logging.getLogger("hymoe").warning("hymoe: %s", message)
