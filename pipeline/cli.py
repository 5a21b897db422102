"""The ``specldm`` command."""

from __future__ import annotations

import argparse
import sys

from pipeline import params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="specldm", description="specldm pipeline tools")
    commands = parser.add_subparsers(dest="command", required=True)
    switch = commands.add_parser(
        "profile", help="rewrite params.yaml from a profile: 'default' (offline CPU) or 'paper'")
    switch.add_argument("name", help="default, or the stem of a file in configs/")
    switch.add_argument("--params", default=str(params.PARAMS_YAML), help="file to write")
    args = parser.parse_args(argv)

    try:
        if args.command == "profile":
            params.write_profile(args.name, args.params)
            print(f"{args.params} now holds profile '{args.name}'; `dvc status` shows what reruns")
    except params.ParamsError as error:
        print(f"specldm: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
