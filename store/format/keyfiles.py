"""Private key files on a host: created 0600, refused when group or others can read them.

Three kinds live in the user's config directory: the symmetric store key (raw 32 bytes), a
host's X25519 key pair (reads the models granted to it) and a publisher's Ed25519 key pair
(signs what it publishes). A public key travels as one text line ``<kind>:<base64> <comment>``
so it can be pasted into a grant or a trust file.
"""
from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import AccessDenied, InvalidInput, NotFound
from ..paths import user_path

CONFIG_DIR = Path(os.environ.get("MODELFS_CONFIG_DIR", str(Path.home() / ".config" / "modelfs")))

HOST_KIND = "modelfs-x25519"
PUBLISHER_KIND = "modelfs-ed25519"
RAW_KEY_BYTES = 32


def write_private_file(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Create ``path`` readable by its owner only; never replace a key by accident."""
    path = user_path(path, "key file")
    if path.is_dir():
        raise InvalidInput(f"key file {path} is a directory")
    for folder in reversed([p for p in (path.parent, *path.parent.parents) if not p.exists()]):
        folder.mkdir(mode=0o700, exist_ok=True)  # as ssh-keygen makes ~/.ssh: whatever the umask
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise InvalidInput(f"key file {path} already exists (refusing to overwrite it)") from None
    except IsADirectoryError:
        raise InvalidInput(f"key file {path} is a directory") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
    return path


def write_public_file(path: Path, text: str) -> None:
    """A public key file: readable by all, writable by its owner only, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o644)
        f.write(text)


def read_private_file(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a private key file, refused when anyone but its owner may read it."""
    path = user_path(path, what)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise InvalidInput(f"{what} {path}: Is a directory, not a key file")
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {path} is not a regular file")
        if _is_public_key_file(path):
            raise AccessDenied(f"{what} {path} is a public key file; give the private key "
                               f"(the file without .pub)")
        if info.st_mode & 0o077:
            raise AccessDenied(f"{what} {path} is readable by group or others (mode "
                               f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`")
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except PermissionError:
        raise AccessDenied(f"{what} {path} is not readable") from None


def _is_public_key_file(path: Path) -> bool:
    """Whether a file starts like a public key line: a public key given where a private one is wanted."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(PUBLISHER_KIND) + 1)
    except OSError:
        return False
    return head.startswith((HOST_KIND.encode() + b":", PUBLISHER_KIND.encode() + b":"))


def fingerprint(kind: str, raw_public: bytes) -> str:
    """Short, stable name of a public key: 16 hex digits of SHA-256(kind ‖ key)."""
    return hashlib.sha256(kind.encode() + b"\0" + raw_public).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    kind: str
    raw: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.raw)

    def to_line(self) -> str:
        text = f"{self.kind}:{base64.b64encode(self.raw).decode()}"
        return f"{text} {self.comment}".rstrip()

    @classmethod
    def from_line(cls, line: str, kind: str) -> PublicKey:
        head, _, comment = line.strip().partition(" ")
        found, sep, encoded = head.partition(":")
        if not sep or found != kind:
            raise InvalidInput(f"not a {kind} public key: expected a line '{kind}:<base64> [comment]'")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != RAW_KEY_BYTES:
            raise InvalidInput(f"malformed {kind} public key (bad base64 or length)")
        return cls(kind, raw, comment.strip())

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str) -> PublicKey:
        path = user_path(path, "public key file")
        if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO would block the read
            raise InvalidInput(f"public key file {path} is not a regular file")
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise NotFound(f"public key file {path} does not exist") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"{path} is not a public key file (it is not text: a private key? "
                               f"its public key is the .pub file beside it)") from None
        except (IsADirectoryError, PermissionError) as e:
            raise InvalidInput(f"cannot read public key file {path}: {e.strerror}") from None
        return cls.from_line(text, kind)


def load_trusted(key_files: list[str], trust_files: list[str]) -> frozenset[bytes] | None:
    """Publisher public keys from ``--trust`` files (one key each) and ``--trust-file`` lists
    (one key line per line; blank lines and ``#`` comments skipped); None when none is given."""
    if not key_files and not trust_files:
        return None
    trusted = {PublicKey.load(path, PUBLISHER_KIND).raw for path in key_files}
    for path in trust_files:
        try:
            lines = user_path(path, "trust file").read_text().splitlines()
        except UnicodeDecodeError:
            raise InvalidInput(f"trust file {path} is not text: one publisher public key line per "
                               f"line") from None
        except FileNotFoundError:
            raise NotFound(f"trust file {path} does not exist") from None
        except OSError as e:
            raise InvalidInput(f"cannot read trust file {path}: {e.strerror}") from None
        for number, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    trusted.add(PublicKey.from_line(line, PUBLISHER_KIND).raw)
                except InvalidInput as e:
                    raise InvalidInput(f"{path} line {number}: {e}") from None
    return frozenset(trusted)
