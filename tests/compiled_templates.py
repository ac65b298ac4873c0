"""Templates compiled once per test process, not once per app.

Each test builds its own app, and each app its own Jinja environment, which compiles every
page it renders from source: a third of the CPU of the page tests went to compiling the same
templates again. Jinja's bytecode cache lets each environment start from the code an earlier
one compiled; the key holds the template's source checksum, so an edited template is
compiled afresh. Apps the tests start as processes (gunicorn) are not affected.
"""

from __future__ import annotations

from types import CodeType

import flask
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket


class MemoryBytecodeCache(BytecodeCache):
    """Compiled templates held in this process, by name, source checksum and the settings
    that change what the compiler emits."""

    def __init__(self) -> None:
        self.codes: dict[tuple, CodeType] = {}

    @staticmethod
    def _key(bucket: Bucket) -> tuple:
        env = bucket.environment
        settings = (env.block_start_string, env.variable_start_string, env.trim_blocks, env.lstrip_blocks)
        return bucket.key, bucket.checksum, settings, tuple(sorted(env.extensions)), env.optimized

    def load_bytecode(self, bucket: Bucket) -> None:
        bucket.code = self.codes.get(self._key(bucket))

    def dump_bytecode(self, bucket: Bucket) -> None:
        if bucket.code is not None:
            self.codes[self._key(bucket)] = bucket.code


def install() -> None:
    """Give every Flask app built in this process from now on the shared cache."""
    flask.Flask.jinja_options = {**flask.Flask.jinja_options, "bytecode_cache": MemoryBytecodeCache()}
