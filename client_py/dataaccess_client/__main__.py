"""The ``dataaccess`` command's entry point, also run by ``python -m dataaccess_client``.

The command needs the ``cli`` extra (rich); without it this says in one line
what to install, where importing ``dataaccess_client.cli`` would fail with a
traceback.
"""

from __future__ import annotations

import sys

# Imported by the command only, never by the client.
CLI_EXTRA = ("rich",)
INSTALL_HINT = "pip install 'dataaccess-client[cli]'"


def main() -> int:
    """Run the dataaccess command; returns the exit status (1 when the ``cli`` extra is missing)."""
    try:
        from dataaccess_client.cli import main as run
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in CLI_EXTRA:
            raise
        print(f"dataaccess: the command needs {missing}: {INSTALL_HINT}", file=sys.stderr)
        return 1
    return run()


if __name__ == "__main__":
    sys.exit(main())
