"""Fails (exit 1) when a block of MIN_LINES or more statements stands twice
in the given files (.py, .pyx, .pxd), within one file or across two.

Statements are compared as token text, so white space, line breaks,
comments and docstrings do not count; import lines are left out (two
modules may well need the same imports). Used by .ci/run over python/ and
raftcore/: one piece of code should serve where the logic is the same.

    python .ci/duplicate_code.py DIR_OR_FILE...
"""
from __future__ import annotations

import io
import pathlib
import sys
import tokenize

MIN_LINES = 6
SUFFIXES = (".py", ".pyx", ".pxd")
_SKIPPED = (tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER)


def statements(path: pathlib.Path) -> list[tuple[int, str]]:
    """(first line, token text) of each logical line of `path`, without
    docstrings and import statements."""
    out: list[tuple[int, str]] = []
    words: list[str] = []
    first = 0
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    try:
        for tok in tokens:
            if tok.type in _SKIPPED:
                continue
            if tok.type == tokenize.NEWLINE:
                if words and not _ignored(words):
                    out.append((first, " ".join(words)))
                words = []
                continue
            if not words:
                first = tok.start[0]
            words.append(tok.string)
    except (tokenize.TokenError, SyntaxError) as exc:
        raise SystemExit(f"{path}: cannot tokenize: {exc}") from None
    return out


def _ignored(words: list[str]) -> bool:
    if words[0] in ("import", "from", "cimport"):
        return True
    # A string alone is a docstring (or a comment written as one).
    return all(w.startswith(("'", '"', "f'", 'f"', "r'", 'r"', "b'", 'b"')) for w in words)


def duplicates(files: list[pathlib.Path]) -> list[str]:
    seen: dict[tuple[str, ...], tuple[pathlib.Path, int, int]] = {}
    found = []
    for path in files:
        stmts = statements(path)
        run_at = -2                # a long run is reported once, at its first window
        for i in range(len(stmts) - MIN_LINES + 1):
            window = tuple(text for _, text in stmts[i:i + MIN_LINES])
            where = (path, i, stmts[i][0])
            prev = seen.setdefault(window, where)
            if prev is where:
                continue
            if prev[0] == path and i - prev[1] < MIN_LINES:
                continue           # a run of repeated statements, not a copied block
            in_run, run_at = run_at == i - 1, i
            if in_run:
                continue
            found.append(f"{path}:{stmts[i][0]} repeats {prev[0]}:{prev[2]} "
                         f"({MIN_LINES}+ statements)")
    return found


def main(argv: list[str]) -> int:
    files: list[pathlib.Path] = []
    for arg in argv:
        p = pathlib.Path(arg)
        files += sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES) if p.is_dir() else [p]
    found = duplicates(files)
    for line in found:
        print(line)
    print(f"duplicate code: {len(found)} block(s) in {len(files)} files", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
