"""Tracking: policies narrow and never widen the domain's; links and pixel rewrite only what they must."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailnode.core.tracking import (
    StatedPolicy,
    TrackingMode,
    TrackingPolicy,
    TrackingPolicyError,
    check_within_ceiling,
    effective_policy,
    is_machine_request,
    is_trackable_url,
    parse_mode,
    parse_stated,
    rewrite_html,
    strictest,
    unescape_attribute,
)

OFF, ANON, PSEUDO, IDENT, FULL = TrackingMode
T = "https://t.example/c/"
PIXEL_URL = "https://t.example/o/TOKEN"
PIXEL = '<img src="https://t.example/o/TOKEN" width="1" height="1" alt="" style="display:none" />'


def _track(url: str) -> str:
    return T + url.replace("&", "+")  # shows which (decoded) URL link_url was given


def _links(document: str) -> str:
    return rewrite_html(document, link_url=_track, pixel_url=None)


# -- modes and policies ------------------------------------------------------------------------


def test_modes_are_ordered_from_off_to_full() -> None:
    assert [mode.rank for mode in (OFF, ANON, PSEUDO, IDENT, FULL)] == [0, 1, 2, 3, 4]
    assert strictest(FULL, PSEUDO, IDENT) is PSEUDO


@pytest.mark.parametrize("value", ["full", "off", "pseudonymous"])
def test_parse_mode(value: str) -> None:
    assert parse_mode(value, "tracking.opens") == TrackingMode(value)


@pytest.mark.parametrize("value", ["FULL", "none", "", 3, None, ["off"]])
def test_parse_mode_names_the_path_and_the_allowed_values(value: object) -> None:
    with pytest.raises(TrackingPolicyError) as caught:
        parse_mode(value, "recipients[2].tracking.links")
    assert caught.value.path == "recipients[2].tracking.links"
    assert str(caught.value).startswith("recipients[2].tracking.links: ")
    assert "off, anonymous, pseudonymous, identified, full" in caught.value.problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"opens": "full", "links": "anonymous"}, TrackingPolicy(FULL, ANON)),
        ({"opens": "identified"}, TrackingPolicy(IDENT, OFF)),  # a left-out axis is off (Kannon)
        ({"links": None}, TrackingPolicy(OFF, OFF)),
        ({}, TrackingPolicy(OFF, OFF)),
    ],
)
def test_domain_policy_parse(value: object, expected: TrackingPolicy) -> None:
    assert TrackingPolicy.parse(value, "tracking") == expected


def test_domain_policy_round_trips_through_json() -> None:
    for policy in (TrackingPolicy(mode, other) for mode in TrackingMode for other in TrackingMode):
        assert TrackingPolicy.parse(policy.to_json(), "tracking") == policy
    assert TrackingPolicy(IDENT, OFF).to_json() == {"opens": "identified", "links": "off"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"opens": "off"}, StatedPolicy(OFF, None)),
        ({"links": "full"}, StatedPolicy(None, FULL)),
        ({"opens": None, "links": "anonymous"}, StatedPolicy(None, ANON)),
        ({}, StatedPolicy()),
        (None, StatedPolicy()),
    ],
)
def test_stated_policy_parse_keeps_unstated_axes_unstated(value: object, expected: StatedPolicy) -> None:
    assert parse_stated(value, "tracking") == expected
    assert parse_stated(expected.to_json(), "tracking") == expected


@pytest.mark.parametrize(
    ("value", "path", "problem"),
    [
        ({"opens": "off", "clicks": "off"}, "tracking.clicks", "unknown field (known: opens, links)"),
        ({"opens": "everything"}, "tracking.opens", "'everything' is not a tracking mode"),
        ({"links": 1}, "tracking.links", "must be a string"),
        ("full", "tracking", "must be a JSON object"),
        (["off", "off"], "tracking", "must be a JSON object"),
    ],
)
def test_policy_errors_name_the_field(value: object, path: str, problem: str) -> None:
    for parse in (TrackingPolicy.parse, parse_stated):
        with pytest.raises(TrackingPolicyError) as caught:
            parse(value, "tracking")
        assert caught.value.path == path
        assert caught.value.problem.startswith(problem)


def test_domain_policy_requires_an_object() -> None:
    with pytest.raises(TrackingPolicyError, match="must be a JSON object"):
        TrackingPolicy.parse(None, "tracking")


CEILING = TrackingPolicy(FULL, IDENT)


@pytest.mark.parametrize(
    ("batch", "recipient", "expected"),
    [
        (None, None, CEILING),  # nothing stated: the domain's policy
        (StatedPolicy(), StatedPolicy(), CEILING),
        (StatedPolicy(PSEUDO, None), None, TrackingPolicy(PSEUDO, IDENT)),
        (None, StatedPolicy(None, ANON), TrackingPolicy(FULL, ANON)),
        (StatedPolicy(OFF, OFF), StatedPolicy(FULL, IDENT), TrackingPolicy(OFF, OFF)),  # batch off wins
        (StatedPolicy(IDENT, None), StatedPolicy(ANON, None), TrackingPolicy(ANON, IDENT)),
        (StatedPolicy(None, ANON), StatedPolicy(OFF, None), TrackingPolicy(OFF, ANON)),
    ],
)
def test_effective_policy_is_the_strictest_stated_per_axis(
    batch: StatedPolicy | None, recipient: StatedPolicy | None, expected: TrackingPolicy
) -> None:
    assert effective_policy(CEILING, batch, recipient) == expected


modes_or_unstated = st.one_of(st.none(), st.sampled_from(TrackingMode))


@given(
    st.sampled_from(TrackingMode),
    st.sampled_from(TrackingMode),
    st.builds(StatedPolicy, modes_or_unstated, modes_or_unstated),
    st.builds(StatedPolicy, modes_or_unstated, modes_or_unstated),
)
def test_effective_policy_is_one_of_the_levels_and_exceeds_none(
    opens: TrackingMode, links: TrackingMode, batch: StatedPolicy, recipient: StatedPolicy
) -> None:
    result = effective_policy(TrackingPolicy(opens, links), batch, recipient)
    for mode, ceiling, stated in (
        (result.opens, opens, [batch.opens, recipient.opens]),
        (result.links, links, [batch.links, recipient.links]),
    ):
        levels = [ceiling, *(level for level in stated if level is not None)]
        assert mode in levels
        assert all(mode.rank <= level.rank for level in levels)


def test_within_ceiling_accepts_equal_lower_and_unstated() -> None:
    check_within_ceiling(CEILING, StatedPolicy(FULL, IDENT), "tracking")
    check_within_ceiling(CEILING, StatedPolicy(OFF, None), "tracking")
    check_within_ceiling(CEILING, StatedPolicy(), "tracking")
    check_within_ceiling(CEILING, None, "tracking")


@pytest.mark.parametrize(
    ("ceiling", "stated", "path", "problem"),
    [
        (
            TrackingPolicy(IDENT, FULL),
            StatedPolicy(FULL, None),
            "tracking.opens",
            "'full' is above the domain's ceiling 'identified'",
        ),
        (
            TrackingPolicy(FULL, OFF),
            StatedPolicy(FULL, ANON),
            "tracking.links",
            "'anonymous' is above the domain's ceiling 'off'",
        ),
    ],
)
def test_above_the_ceiling_is_refused_naming_the_axis(
    ceiling: TrackingPolicy, stated: StatedPolicy, path: str, problem: str
) -> None:
    with pytest.raises(TrackingPolicyError) as caught:
        check_within_ceiling(ceiling, stated, "tracking")
    assert (caught.value.path, caught.value.problem) == (path, problem)
    assert str(caught.value) == f"{path}: {problem}"


# -- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a href="http://x.example/">x</a>', f'<a href="{T}http://x.example/">x</a>'),
        ('<a href="HTTPS://X.example/p">x</a>', f'<a href="{T}HTTPS://X.example/p">x</a>'),
        ("<a href='https://x.example/'>x</a>", f"<a href='{T}https://x.example/'>x</a>"),
        ('<A HREF="https://x.example/">', f'<A HREF="{T}https://x.example/">'),
        ('<a href = "https://x.example/" >', f'<a href = "{T}https://x.example/" >'),
        ('<a href="  https://x.example/\n">', f'<a href="{T}https://x.example/">'),
        # Every other attribute, and every byte outside the value, stays as written.
        (
            '<a class="btn"\n   href="https://x.example/"\n\tstyle="color:red" target=_blank>Go</a>',
            f'<a class="btn"\n   href="{T}https://x.example/"\n\tstyle="color:red" target=_blank>Go</a>',
        ),
        # ">" inside a quoted value does not end the tag.
        (
            '<a title="a > b" href="https://x.example/">',
            f'<a title="a > b" href="{T}https://x.example/">',
        ),
        ("<a title='x>y' href='https://x.example/'>", f"<a title='x>y' href='{T}https://x.example/'>"),
        # Entities are decoded for link_url and the new value is escaped again.
        (
            '<a href="https://x.example/?a=1&amp;b=2&#38;c=3">',
            f'<a href="{T}https://x.example/?a=1+b=2+c=3">',
        ),
        # A browser keeps "&region" literal in an attribute (HTML §13.2.5.73); html.unescape would not.
        (
            '<a href="https://x.example/?a=1&region=eu&copy=2">',
            f'<a href="{T}https://x.example/?a=1+region=eu+copy=2">',
        ),
        # An unquoted href is what the reader follows: it is tracked too, and quoted.
        ("<a href=https://x.example/u>u</a>", f'<a href="{T}https://x.example/u">u</a>'),
        # The first href counts, as in a browser; href text inside another value does not.
        (
            '<a href="https://one.example/" href="https://two.example/">',
            f'<a href="{T}https://one.example/" href="https://two.example/">',
        ),
        (
            '<a title=\'href="https://no.example/"\' href="https://x.example/">',
            f'<a title=\'href="https://no.example/"\' href="{T}https://x.example/">',
        ),
        (
            '<a data-href="https://no.example/" href="https://x.example/">',
            f'<a data-href="https://no.example/" href="{T}https://x.example/">',
        ),
        ('<a/href="https://x.example/">', f'<a/href="{T}https://x.example/">'),
    ],
)
def test_trackable_links_are_rewritten_in_place(html: str, expected: str) -> None:
    assert _links(html) == expected


@pytest.mark.parametrize(
    "html",
    [
        '<a href="">empty</a>',
        '<a href="   ">blank</a>',
        "<a href>no value</a>",
        '<a href="#top">anchor</a>',
        '<a href="mailto:a@example.com">mail</a>',
        '<a href="MAILTO:a@example.com">mail</a>',
        '<a href="tel:+390612345">call</a>',
        '<a href="sms:+390612345">text</a>',
        '<a href="/relative/path">relative</a>',
        '<a href="page.html">relative</a>',
        '<a href="//x.example/">scheme-relative</a>',
        '<a href="javascript:alert(1)">script</a>',
        '<a href="ftp://x.example/">other scheme</a>',
        '<a href="http:///nohost">no host</a>',
        '<a name="anchor">no href</a>',
        '<abbr href="https://x.example/">not a link</abbr>',
        '<area href="https://x.example/">',
        '<link href="https://x.example/style.css">',
        '<a href="https://x.example/"',  # never closed: no link in the document
        'text <a href="https://x.example/" text',
        'text mentioning href="https://x.example/" and <b>bold</b>',
    ],
)
def test_other_links_are_left_alone(html: str) -> None:
    assert _links(html) == html


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ('<a data-no-track href="https://x.example/">', '<a href="https://x.example/">'),
        ('<a href="https://x.example/" data-no-track>', '<a href="https://x.example/">'),
        ('<a href="https://x.example/" DATA-NO-TRACK="">', '<a href="https://x.example/">'),
        ('<a data-no-track="true" href="https://x.example/">', '<a href="https://x.example/">'),
        ('<a data-no-track="false" href="https://x.example/">', '<a href="https://x.example/">'),
        ("<a data-no-track='1' href='https://x.example/'>", "<a href='https://x.example/'>"),
        ('<a data-no-track=yes href="https://x.example/">', '<a href="https://x.example/">'),
        ('<a Data-No-Track = "x" href="https://x.example/">', '<a href="https://x.example/">'),
        ('<a href="https://x.example/"data-no-track>', '<a href="https://x.example/">'),
        ('<a\ndata-no-track\nhref="https://x.example/">', '<a\nhref="https://x.example/">'),
        ('<a href="https://x.example/" data-no-track/>', '<a href="https://x.example/"/>'),
        ("<a data-no-track>x</a>", "<a>x</a>"),
        (
            '<a data-no-track href="https://x.example/" data-no-track>',
            '<a href="https://x.example/">',
        ),
    ],
)
def test_data_no_track_keeps_the_link_and_is_removed(html: str, expected: str) -> None:
    assert _links(html) == expected
    # Removed even when links are not tracked at all.
    assert rewrite_html(html, link_url=None, pixel_url=None) == expected


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            '<a data-no-tracking href="https://x.example/">',
            f'<a data-no-tracking href="{T}https://x.example/">',
        ),
        (
            '<a title="data-no-track" href="https://x.example/">',
            f'<a title="data-no-track" href="{T}https://x.example/">',
        ),
        (
            '<a href="https://x.example/?data-no-track">',
            f'<a href="{T}https://x.example/?data-no-track">',
        ),
        ("<p data-no-track>data-no-track</p>", "<p data-no-track>data-no-track</p>"),
    ],
)
def test_data_no_track_counts_only_as_an_attribute_of_a(html: str, expected: str) -> None:
    assert _links(html) == expected


def test_link_url_gets_each_trackable_link_once_and_may_decline() -> None:
    seen: list[str] = []

    def decline_second(url: str) -> str | None:
        seen.append(url)
        return None if len(seen) == 2 else "https://t.example/c/" + str(len(seen))

    html = (
        '<a href="https://a.example/">A</a><a href="https://b.example/">B</a>'
        '<a href="mailto:x@y.example">M</a><a href="https://c.example/?q=1&amp;r=2">C</a>'
    )
    assert rewrite_html(html, link_url=decline_second, pixel_url=None) == (
        '<a href="https://t.example/c/1">A</a><a href="https://b.example/">B</a>'
        '<a href="mailto:x@y.example">M</a><a href="https://t.example/c/3">C</a>'
    )
    assert seen == ["https://a.example/", "https://b.example/", "https://c.example/?q=1&r=2"]


def test_the_new_url_is_escaped_for_its_quotes() -> None:
    html = "<a href='https://x.example/'>"
    out = rewrite_html(html, link_url=lambda url: "https://t.example/?a=1&b='\"<>", pixel_url=None)
    assert out == "<a href='https://t.example/?a=1&amp;b=&#x27;&quot;&lt;&gt;'>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("a&amp;b", "a&b"),
        ("a&amp;amp;b", "a&amp;b"),  # decoded once only
        ("&lt;&#60;&#x3C;&lt", "<<<<"),
        ("?x=1&region=eu&copy;&copy=2&copy", "?x=1&region=eu©&copy=2©"),
        ("&notit;&notin;", "&notit;∉"),
        ("&bogus;", "&bogus;"),
    ],
)
def test_unescape_attribute_decodes_as_a_browser_does(value: str, expected: str) -> None:
    assert unescape_attribute(value) == expected


@pytest.mark.parametrize(
    ("url", "trackable"),
    [
        ("http://x.example", True),
        ("HTTPS://X.EXAMPLE/a?b#c", True),
        ("https://[::1]/", True),
        ("https:/x.example", False),
        ("https://", False),
        ("https:// x.example", False),
        ("mailto:x@example.com", False),
        ("/x", False),
        ("javascript://x.example/%0Aalert(1)", False),
        ("data:text/html,x", False),
    ],
)
def test_is_trackable_url(url: str, trackable: bool) -> None:
    assert is_trackable_url(url) is trackable


# -- pixel -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<html><body>Hi</body></html>", f"<html><body>Hi{PIXEL}</body></html>"),
        ("<body>Hi</BODY >", f"<body>Hi{PIXEL}</BODY >"),
        ("<body>Hi</Body\n>", f"<body>Hi{PIXEL}</Body\n>"),
        ("<body>a</body>b</body>", f"<body>a{PIXEL}</body>b</body>"),  # the first one only
        ("<p>A fragment</p>", f"<p>A fragment</p>{PIXEL}"),  # no </body>: at the end
        ("", PIXEL),
        ("<body>Hi</bodyx>", f"<body>Hi</bodyx>{PIXEL}"),
        ('<a title="</body>" href="#">x</a></body>', f'<a title="</body>" href="#">x</a>{PIXEL}</body>'),
    ],
)
def test_pixel_goes_before_the_first_end_of_body(html: str, expected: str) -> None:
    assert rewrite_html(html, link_url=None, pixel_url=PIXEL_URL) == expected


def test_pixel_url_is_escaped() -> None:
    out = rewrite_html("<body></body>", link_url=None, pixel_url='https://t.example/o/a&b"c')
    assert out.startswith('<body><img src="https://t.example/o/a&amp;b&quot;c" ')


def test_links_and_pixel_together() -> None:
    html = (
        "<html><body>\n"
        '<p>Hello <a href="https://shop.example/?id=7&amp;ref=mail" class="b">shop</a></p>\n'
        '<p><a data-no-track href="https://shop.example/unsubscribe">unsubscribe</a></p>\n'
        "</body></html>"
    )
    assert rewrite_html(html, link_url=_track, pixel_url=PIXEL_URL) == (
        "<html><body>\n"
        f'<p>Hello <a href="{T}https://shop.example/?id=7+ref=mail" class="b">shop</a></p>\n'
        '<p><a href="https://shop.example/unsubscribe">unsubscribe</a></p>\n'
        f"{PIXEL}</body></html>"
    )


def test_nothing_to_do_returns_the_document() -> None:
    html = '<a href="https://x.example/">x</a></body>'
    assert rewrite_html(html, link_url=None, pixel_url=None) is html


# -- properties --------------------------------------------------------------------------------

FRAGMENTS = [
    "<a ",
    "<A\n",
    "<a>",
    "</a>",
    "<b>",
    "href=",
    "HREF = ",
    '"',
    "'",
    "=",
    ">",
    " ",
    "\n",
    "/",
    "https://x.example/?a=1&amp;b=2",
    "http://y.example",
    "mailto:z@example.com",
    "#top",
    "&region=eu",
    "&lt;",
    "data-no-track",
    "DATA-NO-TRACK",
    "data-no-tracking",
    "</body>",
    "</BODY >",
    "<body>",
    "<!--",
    "-->",
    "text",
]


def _documents(fragments: list[str]) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(fragments), st.text(max_size=4))
    return st.lists(pieces, max_size=40).map("".join)


documents = _documents(FRAGMENTS)
without_no_track = _documents([f for f in FRAGMENTS if "no-track" not in f.lower()]).filter(
    lambda html: "data-no-track" not in html.lower()
)


@given(without_no_track)
def test_nothing_to_rewrite_leaves_every_byte(html: str) -> None:
    assert rewrite_html(html, link_url=None, pixel_url=None) == html


@given(without_no_track)
def test_the_pixel_is_the_only_change(html: str) -> None:
    out = rewrite_html(html, link_url=None, pixel_url=PIXEL_URL)
    assert out.count(PIXEL) == html.count(PIXEL) + 1
    assert out.replace(PIXEL, "", 1) == html


@given(documents)
def test_rewriting_never_fails_and_only_gives_web_links_to_link_url(html: str) -> None:
    seen: list[str] = []

    def link_url(url: str) -> str:
        seen.append(url)
        return f"https://t.example/c/{len(seen)}"

    out = rewrite_html(html, link_url=link_url, pixel_url=PIXEL_URL)
    assert all(is_trackable_url(url) and url == url.strip() for url in seen)
    for number in range(1, len(seen) + 1):
        assert f"https://t.example/c/{number}" in out


@given(documents)
def test_removing_data_no_track_is_done_in_one_pass(html: str) -> None:
    once = rewrite_html(html, link_url=None, pixel_url=None)
    assert len(once) <= len(html)
    assert rewrite_html(once, link_url=None, pixel_url=None) == once


# -- machine requests --------------------------------------------------------------------------

BROWSER = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Safari/605.1.15"
)


@pytest.mark.parametrize(
    ("method", "user_agent", "machine"),
    [
        ("GET", BROWSER, False),
        ("GET", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", False),
        ("POST", BROWSER, False),
        ("HEAD", BROWSER, True),
        ("GET", None, True),
        ("GET", "", True),
        ("GET", "   ", True),
        ("GET", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", True),
        (
            "GET",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            True,
        ),
        ("GET", "python-requests/2.31.0", True),
        ("GET", "curl/8.4.0", True),
        ("GET", "Go-http-client/1.1", True),
        ("GET", "Barracuda Sentinel (EE)", True),
        ("GET", "Mimecast-URL-Protect", True),
        ("GET", "Proofpoint URL Defense", True),
        ("GET", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", True),
        ("GET", "Mozilla/5.0 SkypeUriPreview Preview/0.5", True),
        ("GET", "Baiduspider", True),
        ("GET", "SomeCrawler/1.0", True),
    ],
)
def test_is_machine_request(method: str, user_agent: str | None, machine: bool) -> None:
    assert is_machine_request(method, user_agent) is machine
