"""Per-recipient content of a /v1 batch send: jinja2 templates in a sandbox, compiled once."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from types import TracebackType
from urllib.parse import quote

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

SUBJECT, HTML, TEXT, UNSUBSCRIBE_URL = "subject", "html", "text", "unsubscribe.url_template"

# Filters and tests that look attributes up by a name given as a string ("a.b" walks a path).
_ATTRIBUTE_FILTERS = frozenset(
    {"attr", "map", "select", "selectattr", "reject", "rejectattr", "sort", "groupby", "sum", "unique"}
    | {"min", "max"}
)
# Names a template may test with "is defined" or give a "default", so a send need not supply them.
_GUARD_FILTERS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined"})
_UNDEFINED_NAME = re.compile(r"'(\w+)' is undefined")
# Errors a template or its data can cause while rendering; anything else is a bug of ours.
_RENDER_ERRORS = (
    jinja2.TemplateError,
    ArithmeticError,
    AttributeError,
    LookupError,
    RecursionError,
    TypeError,
    ValueError,
)


class TemplateError(ValueError):
    """A template that cannot compile or render; part names the template, field a missing name."""

    def __init__(self, part: str, problem: str, field: str | None = None) -> None:
        super().__init__(f"{part}: {problem}")
        self.part = part
        self.problem = problem
        self.field = field


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """One recipient's rendered subject, bodies and unsubscribe URL."""

    subject: str
    html: str | None
    text: str | None
    unsubscribe_url: str | None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledContent:
    """A batch's templates, parsed and checked once, rendered once per recipient."""

    subject: jinja2.Template
    html: jinja2.Template | None
    text: jinja2.Template | None
    unsubscribe_url: jinja2.Template | None
    # Every name the templates read from the context; required_fields leaves out the names only
    # ever read through "|default(...)" or tested with "is defined".
    fields: frozenset[str]
    required_fields: frozenset[str]

    def missing_fields(self, available: Collection[str]) -> list[str]:
        """The required fields not among available, sorted."""
        return sorted(self.required_fields.difference(available))

    def render(self, context: Mapping[str, object]) -> RenderedContent:
        """Render every part with context; raise TemplateError naming the part that failed."""
        return RenderedContent(
            subject=_render(SUBJECT, self.subject, context),
            html=None if self.html is None else _render(HTML, self.html, context),
            text=None if self.text is None else _render(TEXT, self.text, context),
            unsubscribe_url=(
                None
                if self.unsubscribe_url is None
                else _render(UNSUBSCRIBE_URL, self.unsubscribe_url, context)
            ),
        )


def _percent_encode(value: object) -> str:
    return quote(str(value), safe="")


def _environment(*, autoescape: bool, url: bool = False) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        # A URL template's expressions come out percent-encoded (RFC 3986 §2.1), so a field can
        # never add a "/", "?", "&" or "#" of its own.
        finalize=_percent_encode if url else None,
        keep_trailing_newline=True,
    )


# Configuration only: rendering keeps no state in an environment, and templates from strings
# are not cached in it.
_ENVIRONMENTS = {
    SUBJECT: _environment(autoescape=False),
    HTML: _environment(autoescape=True),
    TEXT: _environment(autoescape=False),
    UNSUBSCRIBE_URL: _environment(autoescape=False, url=True),
}


def compile_content(
    subject: str, html: str | None, text: str | None, unsubscribe_url: str | None
) -> CompiledContent:
    """Parse and check every template once; raise TemplateError on a syntax error or unsafe access."""
    if html is None and text is None:
        raise TemplateError(HTML, "a send needs html or text (or both)")
    sources = {SUBJECT: subject, HTML: html, TEXT: text, UNSUBSCRIBE_URL: unsubscribe_url}
    trees = {part: _parse(part, source) for part, source in sources.items() if source is not None}
    templates = {part: _compile(part, tree) for part, tree in trees.items()}
    fields, optional = _fields(trees)
    return CompiledContent(
        subject=templates[SUBJECT],
        html=templates.get(HTML),
        text=templates.get(TEXT),
        unsubscribe_url=templates.get(UNSUBSCRIBE_URL),
        fields=fields,
        required_fields=fields - optional,
    )


def recipient_context(
    email: str, name: str, fields: Mapping[str, object], global_fields: Mapping[str, object]
) -> dict[str, object]:
    """The render context of one recipient: its fields over the batch's, email and name its own."""
    return {**global_fields, **fields, "email": email, "name": name}


def _parse(part: str, source: str) -> nodes.Template:
    try:
        tree = _ENVIRONMENTS[part].parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(part, f"line {exc.lineno}: {exc.message}") from None
    for reference in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        raise TemplateError(
            part, f"line {reference.lineno}: templates cannot extend, include or import others"
        )
    for node, name in _accessed_names(tree):
        # The sandbox would refuse this too when rendering; refusing it here tells the sender
        # at once, and keeps templates that probe Python internals out of storage.
        if any(segment.startswith("_") for segment in name.split(".")):
            raise TemplateError(
                part, f"line {node.lineno}: unsafe attribute access is not allowed ({name!r})"
            )
    return tree


def _compile(part: str, tree: nodes.Template) -> jinja2.Template:
    try:
        return _ENVIRONMENTS[part].from_string(tree)
    # An unknown filter or test, found only when generating code.
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(part, f"line {exc.lineno}: {exc.message}") from None


def _accessed_names(tree: nodes.Template) -> Iterator[tuple[nodes.Node, str]]:
    """Attribute and item names the template spells out: x.name, x['name'], x|attr('name')."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Getattr):
            yield node, node.attr
        elif isinstance(node, nodes.Getitem):
            yield from _string_constants(node, [node.arg])
        elif isinstance(node, (nodes.Filter, nodes.Test)) and node.name in _ATTRIBUTE_FILTERS:
            yield from _string_constants(node, [*node.args, *(kwarg.value for kwarg in node.kwargs)])


def _string_constants(node: nodes.Node, args: list[nodes.Expr]) -> Iterator[tuple[nodes.Node, str]]:
    for arg in args:
        if isinstance(arg, nodes.Const) and isinstance(arg.value, str):
            yield node, arg.value


def _fields(trees: Mapping[str, nodes.Template]) -> tuple[frozenset[str], frozenset[str]]:
    """Names read from the context, and those of them a template guards with default/defined."""
    names: set[str] = set()
    guarded: set[str] = set()
    for part, tree in trees.items():
        names |= meta.find_undeclared_variables(tree) - _ENVIRONMENTS[part].globals.keys()
        for node in tree.find_all((nodes.Filter, nodes.Test)):
            if node.name in _GUARD_FILTERS | _GUARD_TESTS and isinstance(node.node, nodes.Name):
                guarded.add(node.node.name)
    return frozenset(names), frozenset(guarded & names)


def _render(part: str, template: jinja2.Template, context: Mapping[str, object]) -> str:
    try:
        return template.render(context)
    except _RENDER_ERRORS as exc:
        raise _render_error(part, exc) from None


def _render_error(part: str, exc: Exception) -> TemplateError:
    line = _template_line(exc.__traceback__)
    where = "" if line is None else f"line {line}: "
    match = _UNDEFINED_NAME.fullmatch(str(exc)) if isinstance(exc, jinja2.UndefinedError) else None
    if match is not None:
        return TemplateError(part, f"{where}missing field {match.group(1)!r}", field=match.group(1))
    if isinstance(exc, RecursionError):
        return TemplateError(part, f"{where}recursion too deep")
    return TemplateError(part, f"{where}{exc}")


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line of the error: jinja2 rewrites tracebacks to point into "<template>"."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_SKIPPED_TAGS = frozenset({"head", "script", "style", "template", "title"})
_BLOCK_TAGS = frozenset(
    {"address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "figure", "footer", "form"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main", "nav", "ol", "p", "pre", "section"}
    | {"table", "tr", "ul"}
)
# HTML's own white space (WHATWG "ASCII whitespace"); a no-break space is text.
_HTML_SPACE = re.compile(r"[ \t\n\r\f]+")


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML body with line breaks where blocks end."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag == "br":
            self.chunks.append("\n")
        elif tag == "li":
            self.chunks.append("\n- ")
        elif tag in ("td", "th"):
            self.chunks.append(" ")
        elif tag == "img":
            self.chunks.append(dict(attrs).get("alt") or "")
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.chunks)))
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "a" and self._links:
            self._end_link(*self._links.pop())
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.chunks.append(_HTML_SPACE.sub(" ", data))

    def _end_link(self, href: str, start: int) -> None:
        label = " ".join("".join(self.chunks[start:]).split())
        if not href or href.startswith("#") or href.removeprefix("mailto:") == label:
            return
        self.chunks.append(f" ({href})" if label else href)


def html_to_text(html: str) -> str:
    """A readable text/plain alternative of an HTML body: blocks become lines, links "label (url)"."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(filter(None, line.split(" "))) for line in "".join(parser.chunks).split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""
