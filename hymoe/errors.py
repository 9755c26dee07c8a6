"""Errors a user can cause. The CLI prints them as one line; everything else is a bug."""


class HymoeError(Exception):
    """A problem with the user's input (path, file, request): the message names the thing."""
