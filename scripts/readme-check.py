#!/usr/bin/env python3
"""The README quotes the embedding example: each quoted file must appear in it verbatim, so the
snippet a newcomer copies is the code CI builds and tests."""
import pathlib, sys

root = pathlib.Path(__file__).resolve().parent.parent
readme = (root / "README.md").read_text()
quoted = ["Examples/Embed/Sources/Rooms/Rooms.swift", "Examples/Embed/Sources/EmbedExample/EmbedExample.swift"]
stale = [path for path in quoted if (root / path).read_text() not in readme]
if stale:
    sys.exit("README.md no longer quotes these files verbatim: " + ", ".join(stale))
print("README quotes the embed example verbatim")
