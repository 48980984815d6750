"""Push large model files once as compressed, encrypted shards and mount them anywhere as read-only files.

The entry point: builds the parser from each command module's ``register``, sets up logging, and
maps every error to one message and the exit code of ``EXIT_CODES``.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from modelfs.store.errors import EXIT_CODES, AccessDenied, InvalidInput, ModelfsError, from_os_error
from modelfs.store.paths import refuse_inside_mountpoint, user_path

from . import access, bench, keys, models, mounting, node, stats, warmup
from .mounthelper import helper_argv

log = logging.getLogger("modelfs")

COMMAND_MODULES = (models, access, keys, mounting, stats, warmup, node, bench)


def package_version() -> str:
    try:
        return version("modelfs")
    except PackageNotFoundError:
        return "unknown"


def exit_code_table() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {cause}" for code, cause in EXIT_CODES.items())


def add_logging_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """``-v``, ``-q``, ``--log-file``: before or after the command (the command's value wins)."""
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (debug messages)",
                        **default)
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors", **default)
    parser.add_argument("--log-file", metavar="PATH", help="append log messages to PATH "
                        "(a background mount's daemon log too)", **default)


def commands_below(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command parser under ``parser``, nested ones too (``keys host-init``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                found += [command, *commands_below(command)]
    return found


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command ``args`` were parsed for (``modelfs keys show``)."""
    words = [getattr(args, dest) for dest in ("command", "keys_command") if getattr(args, dest, None)]
    prog = " ".join([parser.prog, *words])
    return next((p for p in commands_below(parser) if p.prog == prog), parser)


class Parser(argparse.ArgumentParser):
    """argparse with a usage error as one line, like every other failure (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(InvalidInput.exit_code, f"modelfs: {message} (see `{self.prog} --help`)\n")


def refuse_empty(parser: argparse.ArgumentParser) -> None:
    """An empty value is never meant (``--key-file ""`` from an unset variable in a script): refuse
    it for every option and argument that takes a string, instead of falling back to a default."""
    for action in parser._actions:
        if (action.nargs != 0 and action.type is None and action.dest not in ALLOW_EMPTY
                and not isinstance(action, argparse._SubParsersAction)):
            action.type = _not_empty


#: options whose empty value means something
ALLOW_EMPTY = {"comment"}


def _not_empty(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("may not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="modelfs", description=__doc__.splitlines()[0], epilog=exit_code_table(),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    add_logging_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in commands_below(p):
        add_logging_options(command, top=False)
    for parser in (p, *commands_below(p)):
        refuse_empty(parser)
    p.commands = set(sub.choices)
    return p


class CommandFormatter(logging.Formatter):
    """A command's messages as other command-line tools print theirs: ``modelfs: warning: ...``."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return f"modelfs: {record.levelname.lower()}: {record.getMessage()}"


def setup_logging(args: argparse.Namespace) -> None:
    daemon = getattr(args, "foreground", False) or args.command == "serve"  # long-running: log more
    level = (logging.DEBUG if args.verbose else logging.ERROR if args.quiet
             else logging.INFO if daemon else logging.WARNING)
    handler: logging.Handler
    if args.log_file:
        path = str(user_path(args.log_file, "log file"))
        if args.command == "mount":
            refuse_inside_mountpoint(path, args.mountpoint, "log file")
        try:
            handler = logging.handlers.WatchedFileHandler(path)  # reopened after logrotate moves it
        except OSError as e:  # no permission is access denied (4); anything else a bad path (2)
            kind = AccessDenied if isinstance(e, PermissionError) else InvalidInput
            raise kind(f"cannot write the log file {path}: {e.strerror}") from None
    else:
        handler = logging.StreamHandler()
    timed = daemon or args.log_file
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s") if timed
                         else CommandFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    if not daemon:
        # a failed shard read is also raised, and printed once below
        logging.getLogger("modelfs.store.read.reader").setLevel(logging.CRITICAL)


_UNPUBLISHED = {"push": "; nothing was published"}


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    argv = helper_argv(argv, parser.commands)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # found by the top parser, whose help does not list the command's options
        command_parser(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    try:
        setup_logging(args)
        log.debug("modelfs %s: %s", package_version(), " ".join(argv))
        signal.signal(signal.SIGTERM, _terminated)
        return args.func(args)
    except ModelfsError as e:
        return fail(str(e), e.exit_code)
    except OSError as e:
        if isinstance(e, BrokenPipeError):
            return output_closed()
        error = from_os_error(e)
        return fail(str(error), error.exit_code)
    except ValueError as e:  # a value no check caught (e.g. a URL a client library cannot parse)
        log.debug("bad value", exc_info=True)
        return fail(f"invalid input: {e}", InvalidInput.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted" + _UNPUBLISHED.get(args.command, ""), 128 + signal.SIGINT)
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            return fail("terminated" + _UNPUBLISHED.get(args.command, ""), e.code)
        raise
    except Exception as e:  # a bug: still one line; the traceback with -v
        log.debug("unexpected error", exc_info=True)
        return fail(f"unexpected error: {e!r} (run with -v for details)", ModelfsError.exit_code)
    finally:
        # the command is over: a SIGTERM while the interpreter waits for worker threads (a node
        # request timing out) ends the process as the signal does, not with a traceback at exit
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def fail(message: str, code: int) -> int:
    try:
        print(f"modelfs: {message}", file=sys.stderr)
    except OSError:
        pass
    return code


def output_closed() -> int:
    """The reader of stdout went away (``| head``): stop quietly, without a second error at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
