"""``keys host-init``, ``keys publisher-init``, ``keys show``: a host's and a publisher's key pairs."""
from __future__ import annotations

from pathlib import Path

from modelfs.store.errors import InvalidInput, NotFound
from modelfs.store.paths import user_path


def _public_path(private: Path) -> Path:
    return private.with_suffix(".pub")


def _init(kind_cls, default: Path, args, what: str) -> int:
    from modelfs.store.format.keyfiles import write_public_file
    path = user_path(args.key_file or default, "key file")
    public_path = _public_path(path)
    if public_path == path:
        raise InvalidInput(f"{path}: a private key file may not be named *.pub (its public key is "
                           f"written beside it as .pub)")
    if public_path.is_dir():
        raise InvalidInput(f"{public_path}, where the public key goes, is a directory")
    if public_path.exists() and not args.force and not path.exists():  # another key's public half?
        raise InvalidInput(f"{public_path}, where the public key goes, already exists; --force "
                           f"replaces it")
    if not args.comment.isprintable():
        raise InvalidInput("--comment must be one line of printable text")
    pair = kind_cls.create(path, overwrite=args.force)
    public = pair.public
    if args.comment:
        public = type(public)(public.kind, public.raw, args.comment)
    try:
        write_public_file(public_path, public.to_line() + "\n")
    except OSError:
        path.unlink(missing_ok=True)  # no private key without its public half
        raise
    print(f"wrote a new {what} key to {path} (mode 0600) and its public key to {public_path}")
    print(f"fingerprint {public.fingerprint}")
    print(public.to_line())
    return 0


def cmd_host_init(args) -> int:
    from modelfs.store.format.recipients import DEFAULT_HOST_KEY, HostKey
    return _init(HostKey, DEFAULT_HOST_KEY, args, "host")


def cmd_publisher_init(args) -> int:
    from modelfs.store.format.recipients import DEFAULT_PUBLISHER_KEY, PublisherKey
    return _init(PublisherKey, DEFAULT_PUBLISHER_KEY, args, "publisher")


def cmd_show(args) -> int:
    from modelfs.store.format.keyfiles import HOST_KIND, PUBLISHER_KIND, PublicKey
    from modelfs.store.format.recipients import DEFAULT_HOST_KEY, DEFAULT_PUBLISHER_KEY
    defaults = [_public_path(DEFAULT_HOST_KEY), _public_path(DEFAULT_PUBLISHER_KEY)]
    if not args.files and not any(Path(path).exists() for path in defaults):
        raise NotFound(f"this host has no key pair yet ({' or '.join(map(str, defaults))}); "
                       f"`modelfs keys host-init` makes one")
    for path in args.files or defaults:
        path = Path(path)
        if not args.files and not path.exists():
            continue
        head = path.read_bytes()[:len(PUBLISHER_KIND)] if path.is_file() else b""
        kind = PUBLISHER_KIND if head == PUBLISHER_KIND.encode() else HOST_KIND
        key = PublicKey.load(path, kind)
        role = "publisher" if kind == PUBLISHER_KIND else "host"
        print(f"{path}  {role}  {key.fingerprint}  {key.comment}")
    return 0


def register(sub) -> None:
    keys = sub.add_parser("keys", help="create and show a host's or a publisher's key pair")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    for name, func, what in (("host-init", cmd_host_init, "host (X25519: reads the models granted to it)"),
                             ("publisher-init", cmd_publisher_init,
                              "publisher (Ed25519: signs what it pushes, tags and removes)")):
        s = ksub.add_parser(name, help=f"create this {what} key pair")
        s.add_argument("--key-file", help="private key file (default in ~/.config/modelfs); the public "
                                          "key is written beside it with .pub for its extension "
                                          "(host.key: host.pub)")
        s.add_argument("--comment", default="", help="a label kept with the public key, e.g. the host name")
        s.add_argument("--force", action="store_true", help="replace an existing key pair")
        s.set_defaults(func=func)
    s = ksub.add_parser("show", help="fingerprints of public key files (default: this host's)")
    s.add_argument("files", nargs="*")
    s.set_defaults(func=cmd_show)
