"""The composition root: configuration, `threadbot serve` and the command line.

The only package that sees `store`, `bot` and `channels` together; every
import arrow points down: store ← bot ← channels ← threadbot.
"""
