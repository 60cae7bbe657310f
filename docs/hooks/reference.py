"""The manual's generated references, written while MkDocs builds the site, so they cannot drift from the code.

mkdocs.yml names this module under `hooks:`. A page asks for a reference with a marker line of its own,
`<!-- reference: configuration -->` (or `http-api`, `cli`), which is replaced by Markdown made from:

- configuration: the `Settings` class of keel/settings.py (each field's env var, type, default, description);
- http-api: the gateway's OpenAPI schema (`api.application.create_app(...).openapi()`, what `/openapi.json` serves);
- cli: the `keel` command's argparse parser (`keel.cli.main.build_parser()`).

It also brings repository files that the manual links to from outside docs/ into the site: a page links
`bench/results/latest.md` by its path in the repository (so the link works on GitHub too), and the site
gets a page rendered from that same file, which is read, never copied. Any other link that leaves docs/ is
a warning, which `mkdocs build --strict` turns into a failed build.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args, get_origin

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import get_plugin_logger
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

log = get_plugin_logger("keel-reference")

MARKER = re.compile(r"^<!-- reference: ([a-z-]+) -->$", re.MULTILINE)
# Repository files outside docs/ that the site serves as pages of its own: repository path -> site page.
MIRRORED = {"bench/results/latest.md": "operations/benchmark-results.md"}
# A Markdown link or image: [text](target) / ![alt](target). Code spans and fences are taken out first.
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")
CODE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1", re.MULTILINE | re.DOTALL)


def on_files(files: Files, config: MkDocsConfig) -> Files:
    root = _repository(config)
    for source, page in MIRRORED.items():
        if not (root / source).exists():
            log.warning(f"{source} does not exist: the site can't serve it as {page}")
            continue
        files.append(File.generated(config, page, abs_src_path=str(root / source)))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    markdown = MARKER.sub(lambda marker: _reference(marker.group(1), page), markdown)
    return _links_into_the_site(markdown, page, config)


def _repository(config: MkDocsConfig) -> Path:
    return Path(config.docs_dir).resolve().parent


def _reference(name: str, page: Page) -> str:
    renderers: dict[str, Callable[[], str]] = {
        "configuration": configuration_reference,
        "http-api": http_api_reference,
        "cli": cli_reference,
    }
    if name not in renderers:
        log.warning(f"{page.file.src_uri}: no reference named {name!r} (known: {', '.join(renderers)})")
        return ""
    return renderers[name]()


# --- Links that leave docs/ -------------------------------------------------------------------------------


def _links_into_the_site(markdown: str, page: Page, config: MkDocsConfig) -> str:
    """Links to a mirrored repository file point at its page in the site; other links out of docs/ warn."""
    root = _repository(config)
    page_dir = PurePosixPath(page.file.src_uri).parent
    protected = {m.start(): m.end() for m in CODE.finditer(markdown)}

    def rewrite(link: re.Match[str]) -> str:
        target = link.group(2)
        if _in_code(link.start(), protected) or ":" in target.split("#")[0] or target.startswith("#"):
            return link.group(0)
        path, _, anchor = target.partition("#")
        in_repository = _normalised(PurePosixPath("docs") / page_dir / path)
        if in_repository is None or in_repository.parts[:1] == ("docs",):
            return link.group(0)  # a link between the site's own pages: MkDocs checks it
        mirrored = MIRRORED.get(str(in_repository))
        if mirrored is None or not (root / in_repository).exists():
            log.warning(
                f"{page.file.src_uri}: the link {target!r} leaves docs/ for {in_repository}, which the site "
                f"does not serve (serve it through MIRRORED in docs/hooks/reference.py, or write it as code)"
            )
            return link.group(0)
        relative = _relative(PurePosixPath(mirrored), page_dir)
        return f"{link.group(1)}{relative}{'#' + anchor if anchor else ''}{link.group(3)}"

    return LINK.sub(rewrite, markdown)


def _in_code(position: int, protected: Mapping[int, int]) -> bool:
    return any(start <= position < end for start, end in protected.items())


def _normalised(path: PurePosixPath) -> PurePosixPath | None:
    """`docs/a/../../bench/x.md` -> `bench/x.md`; None for a path that climbs out of the repository."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts)


def _relative(target: PurePosixPath, start: PurePosixPath) -> str:
    ups = len(start.parts) - (1 if start == PurePosixPath(".") else 0)
    return str(PurePosixPath(*([".."] * ups), target)) if ups else str(target)


# --- Shared Markdown helpers -----------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text that stays inside one table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- Configuration: keel.settings.Settings ---------------------------------------------------------------


def configuration_reference() -> str:
    from keel.settings import Settings

    sections = [_setting(field) for field in Settings.model_fields.values()]
    return "\n\n".join(sections) + "\n"


def _setting(field: FieldInfo) -> str:
    name = str(field.validation_alias)
    facts = [f"`{_setting_type(field.annotation)}`", f"default: {_setting_default(field)}"]
    facts += _setting_bounds(field)
    return f"### `{name}`\n\n{' · '.join(facts)}\n\n{field.description or ''}"


def _setting_type(annotation: Any) -> str:
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is Literal:
        return " | ".join(f'"{arg}"' for arg in get_args(annotation))
    if len(args) == 1 and len(get_args(annotation)) == 2:  # X | None: "unset" is its default
        return _setting_type(args[0])
    names = {str: "text", int: "integer", float: "number", bool: "true | false", Path: "path"}
    if annotation in names:
        return names[annotation]
    if get_origin(annotation) is dict:
        return "JSON object"
    return getattr(annotation, "__name__", str(annotation)).replace("SecretStr", "secret")


def _setting_default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{_number(value)}`"


def _setting_bounds(field: FieldInfo) -> list[str]:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = []
    for constraint in field.metadata:
        for attribute, symbol in symbols.items():
            if (bound := getattr(constraint, attribute, None)) is not None:
                bounds.append(f"{symbol} {_number(bound)}")
    return [" and ".join(bounds)] if bounds else []


# --- HTTP API: the gateway's OpenAPI schema --------------------------------------------------------------


def http_api_reference() -> str:
    from api.application import create_app
    from keel.settings import Settings

    # The defaults, whatever the environment of the machine building the site says.
    schema = create_app(Settings.model_construct()).openapi()
    errors = _shared_errors(schema)
    lines = _operation_index(schema)
    for path, method, operation in _operations(schema):
        lines += ["", *_operation(path, method, operation, errors)]
    lines += ["", *_errors(errors), "", "## Schemas", ""]
    for name, model in sorted(schema.get("components", {}).get("schemas", {}).items()):
        lines += [*_model(name, model), ""]
    return "\n".join(lines)


def _operations(schema: Mapping[str, Any]) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def _operation_index(schema: Mapping[str, Any]) -> list[str]:
    rows = [
        (f"[`{method} {path}`](#{_operation_anchor(method, path)})", operation.get("summary", ""))
        for path, method, operation in _operations(schema)
    ]
    return ["## Endpoints", "", *_table(("Endpoint", "Does"), rows)]


def _operation_anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def _shared_errors(schema: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Error statuses that mean the same on every endpoint that answers them: listed once, not per endpoint."""
    seen: dict[str, set[tuple[str, ...]]] = {}
    for _, _, operation in _operations(schema):
        for status, response in operation["responses"].items():
            seen.setdefault(status, set()).add(_response(status, response))
    return {
        status: next(iter(rows))
        for status, rows in sorted(seen.items())
        if status[0] in "45" and len(rows) == 1
    }


def _errors(errors: Mapping[str, tuple[str, ...]]) -> list[str]:
    return [
        "## Errors",
        "",
        "What each error status means, on every endpoint that lists it:",
        "",
        *_table(("Status", "Meaning", "Body"), list(errors.values())),
    ]


def _operation(
    path: str, method: str, operation: Mapping[str, Any], errors: Mapping[str, tuple[str, ...]]
) -> list[str]:
    lines = [f"### `{method} {path}` {{ #{_operation_anchor(method, path)} }}", ""]
    lines += [operation.get("summary", ""), ""]
    if description := operation.get("description"):
        lines += [description, ""]
    if operation.get("security"):
        lines += ["Needs credentials when authentication is on (`KEEL_AUTH`).", ""]
    if parameters := operation.get("parameters"):
        rows = _parameters(parameters)
        lines += ["**Parameters**", "", *_table(("Name", "In", "Type", "Description"), rows), ""]
    if body := operation.get("requestBody"):
        for content_type, content in body.get("content", {}).items():
            lines += [f"**Request body** (`{content_type}`): {_type(content.get('schema', {}))}", ""]
    responses = sorted(operation["responses"].items())
    rows = [_response(status, response) for status, response in responses if status not in errors]
    shared = [f"[{status}](#errors)" for status, _ in responses if status in errors]
    lines += ["**Responses**", "", *_table(("Status", "Meaning", "Body"), rows)]
    return lines + (["", f"Errors: {', '.join(shared)}."] if shared else [])


def _parameters(parameters: list[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for parameter in parameters:
        schema = parameter.get("schema", {})
        required = "required" if parameter.get("required") else "optional"
        description = _described(parameter.get("description") or schema.get("description", ""), schema)
        rows.append((f"`{parameter['name']}`", parameter["in"], f"{_type(schema)}, {required}", description))
    return rows


def _response(status: str, response: Mapping[str, Any]) -> tuple[str, ...]:
    bodies = [
        f"`{content_type}`: {_type(content.get('schema', {}))}"
        for content_type, content in response.get("content", {}).items()
    ]
    return (status, response.get("description", ""), "; ".join(bodies) or "none")


def _model(name: str, model: Mapping[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if description := model.get("description"):
        lines += [description, ""]
    if "enum" in model:
        return lines + [f"{_type(model)}."]
    properties: Mapping[str, Mapping[str, Any]] = model.get("properties", {})
    if not properties:
        return lines + [f"{_type(model)}."]
    required = set(model.get("required", []))
    rows = [
        (
            f"`{field}`",
            _type(schema),
            "yes" if field in required else "no",
            _described(schema.get("description", ""), schema),
        )
        for field, schema in properties.items()
    ]
    return lines + _table(("Field", "Type", "Required", "Description"), rows)


def _type(schema: Mapping[str, Any]) -> str:
    """A JSON schema in a few words: `string`, `list of [UIMessage](#uimessage)`, `one of "a", "b"`."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "oneOf" in schema:
        return " or ".join(dict.fromkeys(_type(option) for option in schema["oneOf"]))
    if "anyOf" in schema:
        options = [_type(option) for option in schema["anyOf"] if option.get("type") != "null"]
        kinds = " or ".join(dict.fromkeys(options))
        if len(options) == len(schema["anyOf"]):
            return kinds
        return f"({kinds}) or null" if "," in kinds else f"{kinds} or null"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        return _object_type(schema)
    if kind is None:
        return "any JSON value"
    return f"{kind} ({schema['format']})" if "format" in schema else str(kind)


def _object_type(schema: Mapping[str, Any]) -> str:
    if patterns := schema.get("patternProperties"):
        key, value = next(iter(patterns.items()))
        return f"object: keys matching `{key}`, values {_type(value)}"
    if isinstance(extra := schema.get("additionalProperties"), dict) and extra:
        return f"object of {_type(extra)}"
    if properties := schema.get("properties"):
        return "object with " + ", ".join(f"`{name}`" for name in properties)
    return "object"


def _described(description: str, schema: Mapping[str, Any]) -> str:
    """The description with the schema's limits and default, which say what a request may send."""
    facts = [description.rstrip(".")] if description else []
    facts += _limits(schema)
    if "default" in schema and schema["default"] is not None:
        facts.append(f"default `{_number(schema['default'])}`")
    return "; ".join(facts)


def _limits(schema: Mapping[str, Any]) -> list[str]:
    words = {
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
        "minimum": "≥ {}",
        "exclusiveMinimum": "> {}",
        "maximum": "≤ {}",
        "exclusiveMaximum": "< {}",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
        "maxProperties": "at most {} entries",
        "pattern": "matches `{}`",
    }
    plain = {("minLength", 1): "not empty", ("minItems", 1): "at least one item"}
    limits = [
        plain.get((key, schema[key])) or template.format(_number(schema[key]))
        for key, template in words.items()
        if key in schema
    ]
    for option in schema.get("anyOf", []):
        limits += _limits(option)
    return limits


# --- CLI: the `keel` command's argparse parser ------------------------------------------------------------


class _Usage(argparse.HelpFormatter):
    """Usage lines of a fixed width, so the page does not depend on the terminal that built it."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100)


def cli_reference() -> str:
    from keel.cli.main import build_parser

    lines: list[str] = []
    for parser, summary in _commands(build_parser(), ""):
        lines += ["", *_command(parser, summary)]
    return "\n".join(lines).strip() + "\n"


def _commands(parser: argparse.ArgumentParser, summary: str) -> Iterator[tuple[argparse.ArgumentParser, str]]:
    """The parser and every subcommand under it, depth first, each with its one-line help."""
    yield parser, summary or parser.description or ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                yield from _commands(subparser, helps.get(name, ""))


def _command(parser: argparse.ArgumentParser, summary: str) -> list[str]:
    parser.formatter_class = _Usage
    usage = parser.format_usage().removeprefix("usage: ").strip()
    lines = [f"### `{parser.prog}`", "", summary, "", "```text", usage, "```", ""]
    rows = [_argument(action) for action in parser._actions if _documented(action)]
    return lines + _table(("Argument", "Meaning"), rows) if rows else lines


def _documented(action: argparse.Action) -> bool:
    return not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)


def _argument(action: argparse.Action) -> tuple[str, str]:
    name = ", ".join(action.option_strings) or action.dest
    if action.option_strings and action.nargs != 0:
        name += f" {action.metavar or action.dest.upper()}"
    facts = [action.help or ""]
    if action.choices:
        facts.append("one of " + ", ".join(f"`{choice}`" for choice in action.choices))
    if action.required and action.option_strings:
        facts.append("required")
    return (f"`{name}`", "; ".join(fact for fact in facts if fact))
