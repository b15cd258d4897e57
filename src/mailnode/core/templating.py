"""Per-recipient content of a /v1 batch send: jinja2 templates in a sandbox, compiled once."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from html import unescape
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
_BLANK_LINES = re.compile(r"\n{3,}")
# Markup as the WHATWG tokenizer (HTML §13.2.5) reads it: a start or end tag (the name, then
# attributes up to the first ">" outside a quoted value), a comment, or a declaration,
# processing instruction or bogus comment up to ">". Markup still open at the end of the input
# is dropped ("eof-in-tag"); a "<" that starts none of these is text. Every alternative ends
# at ">" or at the end of the input, and possessive quantifiers never backtrack: linear time.
_MARKUP = re.compile(
    r"<(?:(/?)([a-zA-Z][^\t\n\r\f />\x00]*+)"
    r"((?:[^>=]++|=[\t\n\r\f ]*+(?:\"[^\"]*+\"?|'[^']*+'?)?)*+)(>)?"
    r"|!--(?:.*?-->|.*)"
    r"|[!?/][^>]*+>?)",
    re.DOTALL,
)
_ATTRIBUTE = re.compile(
    r"([^\t\n\r\f />=][^\t\n\r\f />=]*)"
    r"(?:[\t\n\r\f ]*=[\t\n\r\f ]*(\"[^\"]*\"?|'[^']*'?|[^\t\n\r\f >]*))?"
)
# Elements whose content is raw text up to their end tag: no tags inside (HTML §13.1.2).
_RAW_TEXT_END = {
    tag: re.compile(rf"</{tag}(?=[\t\n\r\f />]|\Z)", re.IGNORECASE) for tag in ("script", "style")
}


class _TextWriter:
    """Collects the text of an HTML body with line breaks where blocks end."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str, int]] = []

    def start(self, tag: str, attributes: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag == "br":
            self.chunks.append("\n")
        elif tag == "li":
            self.chunks.append("\n- ")
        elif tag in ("td", "th"):
            self.chunks.append(" ")
        elif tag == "img":
            self.chunks.append(_attribute(attributes, "alt"))
        elif tag == "a":
            self._links.append((_attribute(attributes, "href"), len(self.chunks)))
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n\n")

    def end(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "a" and self._links:
            self._end_link(*self._links.pop())
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n\n")

    def data(self, data: str) -> None:
        if not self._skipping:
            self.chunks.append(_HTML_SPACE.sub(" ", unescape(data)))

    def _end_link(self, href: str, start: int) -> None:
        label = " ".join("".join(self.chunks[start:]).split())
        if not href or href.startswith("#") or href.removeprefix("mailto:") == label:
            return
        self.chunks.append(f" ({href})" if label else href)


def _attribute(attributes: str, name: str) -> str:
    """The value of attribute name (the last one given), character references resolved; "" if absent."""
    value = ""
    for match in _ATTRIBUTE.finditer(attributes):
        if match.group(1).lower() == name:
            raw = match.group(2) or ""
            if raw[:1] in ('"', "'"):
                raw = raw[1:-1] if len(raw) > 1 and raw[-1] == raw[0] else raw[1:]
            value = unescape(raw)
    return value


def _self_closing(attributes: str) -> bool:
    """Does the tag end in "/>" (as <br/>, <img src="x" />), rather than a value like href=/a/?"""
    if not attributes.endswith("/"):
        return False
    last = attributes.rsplit(None, 1)[-1]
    _, equals, value = last.partition("=")
    return not equals or value[:1] in ('"', "'")


def html_to_text(html: str) -> str:
    """A readable text/plain alternative of an HTML body: blocks become lines, links "label (url)"."""
    writer = _TextWriter()
    position = 0
    while (markup := _MARKUP.search(html, position)) is not None:
        if markup.start() > position:
            writer.data(html[position : markup.start()])
        position = markup.end()
        closing, name, attributes, closed = markup.groups()
        if name is None or closed is None:
            continue  # a comment or declaration, or a tag the input ends in
        tag = name.lower()
        if closing:
            writer.end(tag)
            continue
        writer.start(tag, attributes)
        if _self_closing(attributes):
            writer.end(tag)
        elif tag in _RAW_TEXT_END:
            # Never text (script and style are skipped): go on at the end tag.
            raw_end = _RAW_TEXT_END[tag].search(html, position)
            position = len(html) if raw_end is None else raw_end.start()
    if position < len(html):
        writer.data(html[position:])
    lines = (" ".join(filter(None, line.split(" "))) for line in "".join(writer.chunks).split("\n"))
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""
