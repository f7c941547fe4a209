"""``ocikit config IMAGE NEWREF --entrypoint ... --env ...``: a new image with an edited config."""

from __future__ import annotations

import argparse
from typing import Any

from ..client.transports import parse_transport
from ..store.compose import Draft
from ..store.config_edit import ConfigEdits, apply_edits, parse_command
from ..store.images import ImageStore
from ..store.transport import TransportError
from ._shared import run_command
from ._surgery import NEWREF_HELP, add_output_options, deliver, store_name, target
from .create import stored_image

COMMAND_FORMS = "a JSON array (exec form) or a string run by /bin/sh -c"


def _command(text: str) -> list[str]:
    try:
        return parse_command(text)
    except TransportError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "config",
        help="edit an image's entrypoint, command, environment, user, labels...",
        description=(
            "Write IMAGE with its execution parameters changed as NEWREF: a new config (with a history "
            "entry marked empty_layer) and a new manifest; the layers are shared. Options may repeat."
        ),
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("newref", metavar="NEWREF", help=NEWREF_HELP)
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from an index (default: this host)")
    edit = parser.add_argument_group("edits")
    edit.add_argument("--entrypoint", type=_command, help=f"Entrypoint: {COMMAND_FORMS}")
    edit.add_argument("--clear-entrypoint", action="store_true", help="remove Entrypoint")
    edit.add_argument("--cmd", type=_command, help=f"Cmd: {COMMAND_FORMS}")
    edit.add_argument("--clear-cmd", action="store_true", help="remove Cmd")
    edit.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set a variable")
    edit.add_argument("--env-rm", action="append", default=[], metavar="NAME", help="remove a variable")
    edit.add_argument("--workdir", metavar="DIR", help="WorkingDir")
    edit.add_argument("--user", metavar="USER[:GROUP]", help="User")
    edit.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="set a label")
    edit.add_argument("--label-rm", action="append", default=[], metavar="KEY", help="remove a label")
    edit.add_argument("--stop-signal", metavar="SIGNAL", help="StopSignal (SIGTERM, 15...)")
    edit.add_argument("--volume", action="append", default=[], metavar="PATH", help="add a volume")
    edit.add_argument("--volume-rm", action="append", default=[], metavar="PATH", help="remove a volume")
    edit.add_argument("--expose", action="append", default=[], metavar="PORT[/PROTO]", help="expose a port")
    edit.add_argument("--expose-rm", action="append", default=[], metavar="PORT[/PROTO]", help="unexpose")
    add_output_options(parser, layer=False)
    parser.set_defaults(run=run)


def edits_from(args: argparse.Namespace) -> ConfigEdits:
    return ConfigEdits(
        entrypoint=args.entrypoint,
        clear_entrypoint=args.clear_entrypoint,
        cmd=args.cmd,
        clear_cmd=args.clear_cmd,
        env=args.env,
        env_rm=args.env_rm,
        workdir=args.workdir,
        user=args.user,
        labels=args.label,
        label_rm=args.label_rm,
        stop_signal=args.stop_signal,
        volumes=args.volume,
        volume_rm=args.volume_rm,
        expose=args.expose,
        expose_rm=args.expose_rm,
    )


def run(args: argparse.Namespace) -> int:
    async def work() -> int:
        spec = target(args.newref)
        image = await stored_image(parse_transport(args.image), args)
        draft = Draft(image)
        said = apply_edits(draft.config, edits_from(args))
        if not said:
            raise TransportError("nothing to change: give at least one edit (see ocikit config --help)")
        draft.touch({"created_by": "ocikit config " + "; ".join(said), "empty_layer": True})
        with ImageStore(args.store) as store:
            manifest = draft.save(store, store_name(spec))
        await deliver(manifest, spec, args)
        return 0

    return run_command("config", work())
