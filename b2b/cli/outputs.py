"""What a command may write where: nothing that exists is replaced without ``--overwrite``, and nothing
is written inside a checkpoint.

:func:`claim_output` runs before a command does its work, so a refused output costs no time and leaves
nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from b2b.atomic import cannot_write_in
from b2b.checkpoint.folder import enclosing_checkpoint
from b2b.errors import B2BError, some_names


def claim_output(
    path: str | Path,
    *,
    folder: bool,
    overwrite: bool,
    names: Iterable[str] | None = None,
    flag: str = "--out",
) -> Path:
    """Check that the command may write ``path`` (it creates the folders when it writes).

    Parameters
    ----------
    path:
        The output file, or with ``folder`` the output folder.
    folder:
        Whether ``path`` is a folder (``sample``, ``eval``) or a file (``export``).
    overwrite:
        Replace what exists (the files of the same names; nothing else in a folder is touched).
    names:
        With ``folder``, the file names the command writes there: only those must not exist. None: the
        folder must be empty.
    flag:
        The option that named ``path``, for the messages.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    B2BError
        Naming ``path`` and what would be valid: it lies in a checkpoint, is of the other kind (a file
        for a folder), exists without ``overwrite``, or cannot be created or written.
    """
    path = Path(path)
    checkpoint = enclosing_checkpoint(path)
    if checkpoint is not None:
        raise B2BError(
            f"{flag} {str(path)!r} lies inside the checkpoint folder {str(checkpoint)!r}, which holds only "
            f"what training wrote; choose another {flag}"
        )
    if folder and path.exists() and not path.is_dir():
        raise B2BError(f"{flag} {str(path)!r} is a file; give a folder")
    if not folder and path.is_dir():
        raise B2BError(
            f"{flag} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'gen.safetensors')!r}"
        )
    if not overwrite:
        if folder and path.is_dir():
            taken = sorted(p.name for p in path.iterdir() if names is None or p.name in set(names))
            if taken:
                what = "holds files" if names is None else "already holds"
                raise B2BError(
                    f"{flag} {str(path)!r} {what} ({some_names(taken)}); pass --overwrite to replace files "
                    f"of the same names, or choose another {flag}"
                )
        elif path.exists():
            message = f"{flag} {str(path)!r} already exists; pass --overwrite to replace it"
            raise B2BError(f"{message}, or choose another {flag}")
    parent = path if folder else path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise B2BError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    reason = cannot_write_in(existing)
    if reason is not None:
        raise B2BError(
            f"{flag} {str(path)!r}: {str(existing)!r} is not writable ({reason}); choose another {flag}"
        )
    return path
