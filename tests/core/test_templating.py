"""Templates of a /v1 send: compiled once in a sandbox, rendered per recipient, errors named by part."""

from __future__ import annotations

import html
import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.templating import (
    CompiledContent,
    RenderedContent,
    TemplateError,
    compile_content,
    html_to_text,
    recipient_context,
)

ALICE = recipient_context("alice@example.com", "Alice", {"first_name": "Alice"}, {"shop": "Bits & Bobs"})


def compile_subject(subject: str) -> CompiledContent:
    return compile_content(subject, None, "text", None)


# Templates that reach for Python internals; each spells the name out, so compiling refuses it.
UNSAFE_TEMPLATES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ x|attr('__class__') }}",
    "{{ self._TemplateReference__context }}",
    "{{ range.__doc__ }}",
    "{{ x['__globals__'] }}",
    "{{ x._private }}",
    "{{ items|map(attribute='__class__')|list }}",
    "{{ items|selectattr('a.__class__')|list }}",
    "{{ items|sort(attribute='__dict__') }}",
    "{% for c in ''.__class__.__bases__ %}{{ c }}{% endfor %}",
    "{% if x.__len__ %}yes{% endif %}",
]


@pytest.mark.parametrize("template", UNSAFE_TEMPLATES)
def test_unsafe_attribute_access_is_refused_at_compile_time(template: str) -> None:
    with pytest.raises(TemplateError, match="unsafe attribute access is not allowed") as info:
        compile_subject(template)
    assert info.value.part == "subject"


@pytest.mark.parametrize(
    ("part", "arguments"),
    [
        ("subject", ("{{ x.__class__ }}", "<p>ok</p>", None, None)),
        ("html", ("ok", "<p>{{ x.__class__ }}</p>", None, None)),
        ("text", ("ok", None, "{{ x.__class__ }}", None)),
        ("unsubscribe.url_template", ("ok", None, "ok", "https://e.example/{{ x.__class__ }}")),
    ],
)
def test_errors_name_the_template_they_come_from(
    part: str, arguments: tuple[str, str | None, str | None, str | None]
) -> None:
    with pytest.raises(TemplateError) as info:
        compile_content(*arguments)
    assert info.value.part == part
    assert str(info.value).startswith(f"{part}: ")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Hello\n{% if %}", "subject: line 2: Expected an expression"),
        ("{{ name", "subject: line 1: unexpected end of template"),
        ("{% for x in y %}", "subject: line 1: Unexpected end of template"),
        ("{{ name|no_such_filter }}", "subject: line 1: No filter named 'no_such_filter'"),
        ("a\n\n{% include 'other' %}", "subject: line 3: templates cannot extend, include or import others"),
        ("{% extends 'base' %}", "subject: line 1: templates cannot extend"),
        ("{% import 'macros' as m %}", "subject: line 1: templates cannot extend"),
    ],
)
def test_syntax_errors_give_the_line(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_subject(template)
    assert str(info.value).startswith(message)
    assert info.value.field is None


def test_a_send_needs_a_body() -> None:
    with pytest.raises(TemplateError, match="html or text"):
        compile_content("subject", None, None, None)


# Unsafe access the compiler cannot see (a name computed at render time, a format string, a
# method of a type, a mutation): jinja2's sandbox refuses it while rendering.
SANDBOX_ONLY = [
    ("{{ email|attr(attribute) }}", {"attribute": "__class__"}),
    ("{{ email['_' ~ '_class__'] }}", {}),
    ("{{ '{0.__class__.__mro__}'.format(email) }}", {}),
    ("{{ template.format(email) }}", {"template": "{0.__class__}"}),
    ("{{ dict.mro() }}", {}),
    ("{% set seen = [] %}{{ seen.append(email) }}", {}),
    ("{{ fields.update(email=1) }}", {"fields": {}}),
]


@pytest.mark.parametrize(("template", "fields"), SANDBOX_ONLY)
def test_the_sandbox_refuses_unsafe_access_at_render_time(template: str, fields: dict[str, object]) -> None:
    compiled = compile_subject(template)
    with pytest.raises(TemplateError, match="is unsafe") as info:
        compiled.render(recipient_context("a@example.com", "A", fields, {}))
    assert info.value.part == "subject"
    assert "<class" not in str(info.value)


def test_a_missing_field_is_named() -> None:
    compiled = compile_content("Hi", "<p>Hello {{ first_name }} {{ last_name }}</p>", None, None)
    assert compiled.missing_fields(["first_name", "email"]) == ["last_name"]
    with pytest.raises(TemplateError) as info:
        compiled.render({"first_name": "Ann"})
    assert str(info.value) == "html: line 1: missing field 'last_name'"
    assert (info.value.part, info.value.field) == ("html", "last_name")


def test_missing_fields_are_found_without_rendering() -> None:
    compiled = compile_content(
        "{{ greeting }}, {{ name }}",
        "{% for item in items %}{{ item.title }}{% endfor %}{% set total = 3 %}{{ total }}",
        "{{ range(2)|list }} {{ footer }}",
        "https://e.example/u/{{ token }}",
    )
    assert compiled.required_fields == {"greeting", "name", "items", "footer", "token"}
    assert compiled.missing_fields(["name", "items"]) == ["footer", "greeting", "token"]


def test_fields_with_a_default_or_a_defined_test_are_not_required() -> None:
    compiled = compile_subject(
        "Hi {{ first_name|default('there') }}{% if last_name is defined %} {{ last_name }}{% endif %}"
    )
    assert compiled.fields == {"first_name", "last_name"}
    assert compiled.missing_fields([]) == []
    assert compiled.render({}).subject == "Hi there"
    assert compiled.render({"first_name": "Ann", "last_name": "Lee"}).subject == "Hi Ann Lee"


@pytest.mark.parametrize(
    ("template", "fields", "message"),
    [
        ("{{ 1 / 0 }}", {}, "subject: line 1: division by zero"),
        ("a\n{{ user.city }}", {"user": {}}, "subject: line 2: 'dict object' has no attribute 'city'"),
        ("{{ count + 'x' }}", {"count": 1}, "subject: line 1: unsupported operand"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", {}, "subject: line 1: recursion too deep"),
        ("{{ items[5] }}", {"items": []}, "subject: line 1: list object has no element 5"),
    ],
)
def test_render_errors_become_template_errors(template: str, fields: dict[str, object], message: str) -> None:
    compiled = compile_subject(template)
    with pytest.raises(TemplateError) as info:
        compiled.render(fields)
    assert str(info.value).startswith(message)
    assert info.value.field is None


def test_html_is_escaped_and_text_and_subject_are_not() -> None:
    compiled = compile_content("{{ x }}", "<p>{{ x }}</p>", "{{ x }}", None)
    assert compiled.render({"x": "<script>&"}) == RenderedContent(
        subject="<script>&", html="<p>&lt;script&gt;&amp;</p>", text="<script>&", unsubscribe_url=None
    )


def test_url_template_percent_encodes_every_field() -> None:
    compiled = compile_content("s", None, "t", "https://ex.com/u?e={{ email }}&n={{ name }}")
    rendered = compiled.render(recipient_context("a+b@x.org", "Zoë & co", {}, {}))
    assert rendered.unsubscribe_url == "https://ex.com/u?e=a%2Bb%40x.org&n=Zo%C3%AB%20%26%20co"


@given(st.text())
def test_any_field_value_comes_back_from_every_template(value: str) -> None:
    compiled = compile_content("{{ v }}", "<b>{{ v }}</b>", "{{ v }}", "https://e.example/u/{{ v }}")
    rendered = compiled.render({"v": value})
    assert rendered.subject == rendered.text == value
    assert rendered.html is not None
    inner = rendered.html.removeprefix("<b>").removesuffix("</b>")
    assert not set("<>\"'") & set(inner)
    assert html.unescape(inner) == value
    assert rendered.unsubscribe_url is not None
    encoded = rendered.unsubscribe_url.removeprefix("https://e.example/u/")
    assert re.fullmatch(r"[A-Za-z0-9_.~%-]*", encoded)
    assert unquote(encoded, errors="surrogatepass") == value


def test_recipient_fields_override_global_fields_but_not_email_and_name() -> None:
    context = recipient_context(
        "bob@example.com",
        "",
        {"plan": "pro", "email": "spoof@example.com"},
        {"plan": "free", "shop": "Bits", "name": "Global"},
    )
    assert context == {"plan": "pro", "shop": "Bits", "email": "bob@example.com", "name": ""}


def test_absent_parts_render_as_none() -> None:
    rendered = compile_content("Hi {{ first_name }}", None, "Bye", None).render(ALICE)
    assert rendered == RenderedContent("Hi Alice", None, "Bye", None)


def test_text_keeps_its_trailing_newline() -> None:
    assert compile_content("s", None, "line\n", None).render({}).text == "line\n"


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ("", ""),
        ("plain", "plain\n"),
        ("<p>One</p><p>Two</p>", "One\n\nTwo\n"),
        ("<div>a<br>b<br/>c</div>", "a\nb\nc\n"),
        ("<p>  lots \n of\tspace  </p>", "lots of space\n"),
        ("<p>Fish &amp; chips &lt;3 &eacute;&#233;</p>", "Fish & chips <3 éé\n"),
        ('<a href="https://e.example/x">Our shop</a>', "Our shop (https://e.example/x)\n"),
        ('<a href="https://e.example/">https://e.example/</a>', "https://e.example/\n"),
        ('<a href="mailto:hi@e.example">hi@e.example</a>', "hi@e.example\n"),
        ('<a href="#top">Top</a>', "Top\n"),
        ('<a href="https://e.example/"><img src="logo.png" alt=""></a>', "https://e.example/\n"),
        ('<img src="logo.png" alt="Logo"> shop', "Logo shop\n"),
        ("<ul><li>one</li><li>two <b>bold</b></li></ul>", "- one\n- two bold\n"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\n\nc\n"),
        (
            "<html><head><title>T</title><style>p {color: red}</style></head>"
            "<body><h1>Hi</h1><script>alert(1)</script><p>Body</p></body></html>",
            "Hi\n\nBody\n",
        ),
        ("<p>no&nbsp;break</p>", "no\xa0break\n"),
    ],
)
def test_html_to_text(source: str, text: str) -> None:
    assert html_to_text(source) == text


@given(st.text())
def test_html_to_text_gives_back_escaped_text(value: str) -> None:
    words = [word for word in re.split(r"[ \t\n\r\f]+", value) if word]
    expected = " ".join(words) + "\n" if words else ""
    assert html_to_text(f"<p>{html.escape(value)}</p>") == expected
