"""Unit files read back as systemd reads them, for the systemd tests (tests/unit/ and
tests/lab/test_systemd.py): an independent reading of systemd's rules (split on blanks,
quotes, C escapes, then specifiers and `$$`), not nsrun's own quoting run backwards."""

from __future__ import annotations

import re

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", '"': '"', "'": "'", "s": " "}


def systemd_words(value: str, specifiers: dict[str, str] | None = None, dollar: bool = True) -> list[str]:
    """The words of a command line (Exec*=) or an Environment= value, as systemd reads them."""
    words: list[str] = []
    i, n = 0, len(value)

    def escape(i: int) -> tuple[str, int]:
        c = value[i + 1]
        if c == "x":
            return chr(int(value[i + 2:i + 4], 16)), i + 4
        if c in _ESCAPES:
            return _ESCAPES[c], i + 2
        raise AssertionError(f"unknown escape \\{c} in {value!r}")

    while True:
        while i < n and value[i] in " \t":
            i += 1
        if i >= n:
            break
        word = []
        while i < n and value[i] not in " \t":
            c = value[i]
            if c in "\"'":
                i += 1
                while value[i] != c:
                    if value[i] == "\\":
                        ch, i = escape(i)
                    else:
                        ch, i = value[i], i + 1
                    word.append(ch)
                i += 1
            elif c == "\\":
                ch, i = escape(i)
                word.append(ch)
            else:
                word.append(c)
                i += 1
        words.append("".join(word))

    def expand(word: str) -> str:
        def spec(m: re.Match[str]) -> str:
            if m.group(1) == "%":
                return "%"
            assert specifiers and m.group(1) in specifiers, f"unexpected specifier %{m.group(1)}"
            return specifiers[m.group(1)]
        return re.sub(r"%(.)", spec, word)

    words = [expand(w) for w in words]
    if dollar:  # the executable path is not subject to $ substitution
        for j, w in enumerate(words[1:], 1):
            assert not re.search(r"(?<!\$)\$(?!\$)", w.replace("$$", "")), f"unescaped $ in {w!r}"
            words[j] = w.replace("$$", "$")
    return words


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}}; comments and blank lines skipped."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None, line
        key, _, value = line.partition("=")
        out[section].setdefault(key, []).append(value)
    return out


def exec_argv(text: str, key: str = "ExecStart", specifiers: dict[str, str] | None = None) -> list[str]:
    [value] = parse_unit(text)["Service"][key]
    return systemd_words(value.lstrip("-"), specifiers)


def unit_environment(text: str) -> dict[str, str]:
    env = {}
    for value in parse_unit(text)["Service"].get("Environment", []):
        for word in systemd_words(value, dollar=False):
            k, _, v = word.partition("=")
            env[k] = v
    return env
