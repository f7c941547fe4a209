"""What the image commands (copy, pull, push, images, inspect…) share: the ``--store`` and
``--format`` options, progress output and turning errors into one-line messages.

Progress goes to stderr as rich bars when stderr is a terminal, nowhere otherwise (or with
``-q``); ``--format json`` writes one JSON object per event to stdout instead, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import msgspec

from ..client.options import OptionsError
from ..spec import DigestError, Platform, ReferenceError, VerificationError, parse_platform
from ..spec.platform import PlatformError
from ..store.copy import CopyEvent, CopyResult
from ..store.transport import TransportError

#: Errors that are the user's or the data's fault: reported as one line, never a traceback.
EXPECTED_ERRORS = (
    TransportError,
    VerificationError,
    DigestError,
    ReferenceError,
    PlatformError,
    msgspec.DecodeError,
    OptionsError,
    OSError,
)


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="DIR",
        help="the local image store [env OCIKIT_STORE, default ~/.local/share/ocikit/store]",
    )


def add_registry_options(parser: argparse.ArgumentParser, root_help: str, config_help: str) -> None:
    """``--root``, ``--storage``, ``--metadata`` and ``--config``: the options that point a
    maintenance command at a registry's storage, as ``ocikit serve`` names it."""
    parser.add_argument("--root", help=f"{root_help} [env OCIKIT_ROOT]")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the registry's blob storage, as for ocikit serve [env OCIKIT_STORAGE]",
    )
    parser.add_argument(
        "--metadata",
        metavar="URL",
        help="the registry's metadata database, as for ocikit serve [env OCIKIT_METADATA]",
    )
    parser.add_argument("--config", metavar="FILE", help=f"{config_help} [env OCIKIT_CONFIG]")


def add_format_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="json: machine-readable output"
    )


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    add_format_option(parser)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def run_command(name: str, work: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; expected failures print ``ocikit NAME: message``, exit 1."""
    try:
        return asyncio.run(work)
    except EXPECTED_ERRORS as exc:
        print(f"ocikit {name}: {_message(exc)}", file=sys.stderr)
        return 1


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
    sys.stdout.flush()


class Progress:
    """A progress sink for the copy engine, chosen by the options and the terminal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = args.format == "json"
        self.bars: Any = None
        self._tasks: dict[str, Any] = {}
        if not self.json and not args.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                transient=False,
            )

    def __enter__(self) -> Progress:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def __call__(self, event: CopyEvent) -> None:
        if self.json:
            if event.kind != "blob-progress":
                print_json(
                    {
                        "event": event.kind,
                        "digest": event.digest,
                        "mediaType": event.media_type,
                        "size": event.size,
                    }
                )
            return
        if self.bars is None:
            return
        label = f"{event.digest.partition(':')[2][:12]}"
        task = self._tasks.get(event.digest)
        if task is None:
            task = self.bars.add_task(label, total=event.size)
            self._tasks[event.digest] = task
        if event.kind == "blob-progress":
            self.bars.update(task, completed=event.done)
        elif event.kind == "blob-skipped":
            self.bars.update(task, completed=event.size, description=f"{label} (exists)")
        elif event.kind in ("blob-done", "manifest"):
            self.bars.update(task, completed=event.size)

    def finished(self, result: CopyResult, destination: str) -> None:
        summary = {
            "event": "copied",
            "destination": destination,
            "digest": result.descriptor.digest,
            "mediaType": result.descriptor.media_type,
            "size": result.descriptor.size,
            "manifests": result.manifests,
            "blobsCopied": result.blobs_copied,
            "blobsSkipped": result.blobs_skipped,
            "bytesCopied": result.bytes_copied,
            "referrers": result.referrers,
        }
        if self.json:
            print_json(summary)
        else:
            print(result.descriptor.digest)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def parse_platform_option(text: str | None) -> Platform | None:
    return None if text is None else parse_platform(text)
