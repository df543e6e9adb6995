"""``python -m services.coordinator [--embedded] [--port P]``: the same as ``cosmic serve``."""

import argparse
import sys

from services.coordinator import cli

parser = argparse.ArgumentParser(prog="python -m services.coordinator", description=cli.__doc__.split("\n")[0])
cli.add_arguments(parser)
sys.exit(cli.run(parser.parse_args()))
