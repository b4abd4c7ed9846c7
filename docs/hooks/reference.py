"""MkDocs hook: the command and settings reference, generated from the code at build time.

`docs/reference/commands.md` and `docs/reference/settings.md` are stubs holding a marker line.
At build time this hook replaces the marker with Markdown rendered from `digest.cli.build_parser()`
(every command, nested subcommands included: usage, description, options) and from the settings
dataclasses of `digest.config` (every section and key: type, default, help, environment variable).
Nothing is hard-coded: the parser and the dataclasses are walked generically, so a new command,
option, section or key appears in the manual with the next build. A stub page that lost its
marker, or a generator that fails, stops the build rather than publishing a stale page.

The functions `render_commands`, `render_settings`, `iter_commands` and `iter_settings` are also
used by `tests/test_docs.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

COMMANDS_MARKER = "<!-- digest:commands -->"
SETTINGS_MARKER = "<!-- digest:settings -->"

_USAGE_WIDTH = 88  # fixed, so the page does not depend on the terminal that builds it


# --- commands ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """One parser in the command tree: the root `digest` or a (nested) subcommand."""

    path: tuple[str, ...]  # ("digest", "subscriber", "add")
    parser: argparse.ArgumentParser
    summary: str  # the one-line help given when the subcommand was added

    @property
    def name(self) -> str:
        return " ".join(self.path)


def _subparser_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [
        a
        for a in getattr(parser, "_actions", [])
        if isinstance(a, argparse._SubParsersAction)  # argparse has no public walk
    ]


def iter_commands(parser: argparse.ArgumentParser | None = None) -> Iterator[Command]:
    """Every parser of the tree, depth first, in the order the commands were added."""
    if parser is None:
        from digest.cli import build_parser

        parser = build_parser()
    root = (parser.prog or "digest").split()[0]
    yield from _walk(parser, (root,), _clean(parser.description))


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...], summary: str
) -> Iterator[Command]:
    yield Command(path, parser, summary)
    for group in _subparser_actions(parser):
        helps = {
            getattr(choice, "dest", None): _clean(getattr(choice, "help", None))
            for choice in getattr(group, "_choices_actions", [])
        }
        seen: set[int] = set()
        for name, child in (group.choices or {}).items():
            if id(child) in seen:  # an alias names the same parser twice
                continue
            seen.add(id(child))
            yield from _walk(child, (*path, name), helps.get(name, ""))


def _clean(text: object) -> str:
    if not text or text is argparse.SUPPRESS:
        return ""
    return " ".join(str(text).split())


def _usage(parser: argparse.ArgumentParser) -> str:
    try:
        formatter = parser.formatter_class(prog=parser.prog, width=_USAGE_WIDTH)
        formatter.add_usage(
            parser.usage,
            parser._actions,
            parser._mutually_exclusive_groups,
        )
        text = formatter.format_help()
    except Exception:  # a formatter of another shape: fall back to the public call
        text = parser.format_usage()
    return text.strip()


def _expand_help(action: argparse.Action, prog: str) -> str:
    text = _clean(action.help)
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % params
    return text


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        mv = action.metavar
        parts = list(mv) if isinstance(mv, tuple) else [str(mv)]
    elif action.choices is not None:
        parts = ["{" + ",".join(map(str, action.choices)) + "}"]
    else:
        parts = [action.dest.upper()]
    nargs = action.nargs
    if isinstance(nargs, int) and nargs > 1 and len(parts) == 1:
        parts = parts * nargs
    text = " ".join(parts)
    if nargs == "?":
        text = f"[{text}]"
    elif nargs == "*":
        text = f"[{text} ...]"
    elif nargs == "+":
        text = f"{text} [{text} ...]"
    return text


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(value, list | tuple) and not value:
        return ""
    return str(value)


def _code(text: str) -> str:
    if not text:
        return ""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows: list[str] = []
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.help is argparse.SUPPRESS:
            continue
        if action.option_strings:
            name = ", ".join(action.option_strings)
            extra = _code(_metavar(action))
        else:  # a positional argument
            name = _metavar(action)
            extra = "*(positional)*"
        if action.choices is not None and action.metavar is not None:
            extra += " one of " + ", ".join(_code(str(c)) for c in action.choices)
        rows.append(
            f"| {_code(name)} | {extra} | {_code(_default(action))} "
            f"| {_cell(_expand_help(action, parser.prog))} |"
        )
    if not rows:
        return []
    return ["| option | argument | default | what it does |", "| --- | --- | --- | --- |", *rows]


def _anchor(command: Command) -> str:
    return "-".join(command.path)


def render_commands(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown for every command: a summary table, then one section per command."""
    commands = list(iter_commands(parser))
    root, subs = commands[0], commands[1:]
    out: list[str] = []
    out += ["| command | what it does |", "| --- | --- |"]
    for cmd in subs:
        out.append(f"| [{_code(cmd.name)}](#{_anchor(cmd)}) | {_cell(cmd.summary)} |")
    out += ["", f"## Global options {{#{_anchor(root)}}}", ""]
    if root.summary:
        out += [root.summary, ""]
    out += ["```text", _usage(root.parser), "```", ""]
    out += _options_table(root.parser)
    for cmd in subs:
        level = "#" * min(6, len(cmd.path))  # digest x: ##, digest x y: ###
        out += ["", f"{level} {cmd.name} {{#{_anchor(cmd)}}}", ""]
        if cmd.summary:
            out += [cmd.summary[0].upper() + cmd.summary[1:] + ".", ""]
        description = _clean(cmd.parser.description)
        if description and description != cmd.summary:
            out += [description, ""]
        out += ["```text", _usage(cmd.parser), "```"]
        table = _options_table(cmd.parser)
        if table:
            out += ["", *table]
        children = [c for c in subs if c.path[:-1] == cmd.path]
        if children:
            names = ", ".join(f"[{c.path[-1]}](#{_anchor(c)})" for c in children)
            out += ["", f"Subcommands: {names}."]
    return "\n".join(out) + "\n"


# --- settings ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
    """One key of the settings file."""

    section: tuple[str, ...]  # ("smtp",); nested sections give longer tuples
    key: str
    type: str
    default: str  # as written in settings.toml; "" when there is none
    help: str
    env: str

    @property
    def dotted(self) -> str:
        return ".".join((*self.section, self.key))


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in args)
        return f"{names}, optional" if len(args) < len(typing.get_args(hint)) else names
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if hint in names:
        return names[hint]
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))} of {args}"
    return getattr(hint, "__name__", str(hint))


def _toml(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _env_name(section: tuple[str, ...], key: str) -> str:
    """The variable that overrides a key, as digest.config derives it: DIGEST_<SECTION>_<KEY>."""
    from digest import config

    derive = getattr(config, "env_name", None)  # a public helper, if the module grows one
    if callable(derive):
        try:
            return str(derive(".".join(section), key))
        except TypeError:
            pass
    return "_".join(("DIGEST", *(s.upper() for s in section), key.upper()))


def iter_settings(root: type | None = None) -> Iterator[Setting]:
    """Every settings key, section by section, in declaration order."""
    if root is None:
        from digest.config import Settings

        root = Settings
    yield from _walk_settings(root, ())


def _walk_settings(cls: type, section: tuple[str, ...]) -> Iterator[Setting]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.metadata.get("internal"):
            continue
        hint = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(hint):
            yield from _walk_settings(hint, (*section, f.name))  # type: ignore[arg-type]
            continue
        if not section:  # a top-level field that is not a section: not a settings key
            continue
        yield Setting(
            section=section,
            key=f.name,
            type=_type_name(hint),
            default=_toml(_field_default(f)),
            help=_clean(f.metadata.get("help", "")),
            env=_env_name(section, f.name),
        )


def _section_doc(cls: type | None) -> str:
    doc = _clean(getattr(cls, "__doc__", "") if cls else "")
    # A dataclass without a docstring gets a generated signature as __doc__: not prose.
    return "" if not doc or doc.startswith(getattr(cls, "__name__", "?") + "(") else doc


def render_settings(root: type | None = None) -> str:
    """Markdown: one table per section (key, type, default, environment variable, help)."""
    settings = list(iter_settings(root))
    if root is None:
        from digest.config import Settings

        root = Settings
    classes = _section_classes(root, ())
    out: list[str] = []
    sections: list[tuple[str, ...]] = []
    for s in settings:
        if s.section not in sections:
            sections.append(s.section)
    out.append("Sections: " + ", ".join(f"[`[{'.'.join(s)}]`](#{'-'.join(s)})" for s in sections))
    for section in sections:
        name = ".".join(section)
        out += ["", f"## [{name}] {{#{'-'.join(section)}}}", ""]
        doc = _section_doc(classes.get(section))
        if doc:
            out += [doc, ""]
        out += [
            "| key | type | default | environment variable | what it does |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in settings:
            if s.section != section:
                continue
            default = _code(s.default) if s.default else "*(none)*"
            out.append(
                f"| {_code(s.key)} | {s.type} | {default} | {_code(s.env)} | {_cell(s.help)} |"
            )
    text = _default_file_text()
    if text:
        out += [
            "",
            "## The file `digest init` writes",
            "",
            "Every key at its default, each with its help text as a comment:",
            "",
            "```toml",
            text.rstrip(),
            "```",
        ]
    return "\n".join(out) + "\n"


def _section_classes(cls: type, section: tuple[str, ...]) -> dict[tuple[str, ...], type]:
    found: dict[tuple[str, ...], type] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(hint) and not f.metadata.get("internal"):
            found[(*section, f.name)] = hint  # type: ignore[assignment]
            found.update(_section_classes(hint, (*section, f.name)))  # type: ignore[arg-type]
    return found


def _default_file_text() -> str:
    from digest import config

    writer = getattr(config, "default_settings_text", None)
    if not callable(writer):
        return ""
    try:
        return str(writer())
    except Exception:  # optional extra: never worth failing the build over
        return ""


# --- the MkDocs hook ----------------------------------------------------------------------------

_GENERATORS = {
    "reference/commands.md": (COMMANDS_MARKER, render_commands),
    "reference/settings.md": (SETTINGS_MARKER, render_settings),
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace a page's marker with the generated reference."""
    src = getattr(getattr(page, "file", None), "src_uri", "")
    for uri, (marker, render) in _GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, render())
        elif src == uri:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"{uri}: the marker {marker} is missing; nothing to generate into")
    return markdown
