"""python -m custom_conv.datasets fetch NAME [NAME ...] [--data-dir DIR]"""
import argparse
import sys

from .catalog import DATASETS
from .sources import FetchFailed, SOURCES, fetch


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m custom_conv.datasets",
                                     description="Puts datasets where train.py and torchvision read them.")
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("fetch", help="fetch datasets, trying each source in turn",
                              epilog="sources, in order: " + "; ".join(
                                  f"{name}: {', '.join(s.description for s in sources)}"
                                  for name, sources in SOURCES.items()))
    get.add_argument("names", nargs="+", choices=list(DATASETS), metavar="NAME",
                     help=f"one of {', '.join(DATASETS)}")
    get.add_argument("--data-dir", default="./data", help="train.py's --data-dir (default ./data)")
    args = parser.parse_args(argv)
    failed = False
    for name in args.names:
        try:
            fetch(name, args.data_dir)
        except FetchFailed as error:
            print(f"{name}: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
