"""Open and click tracking: the policy a delivery is tracked under, and the HTML it is sent with.

A Tracking Policy states a mode per axis (opens, links) on an ordered scale. The domain's policy
is the ceiling; a batch or a recipient may narrow it but never widen it. The HTML rewriter
turns trackable links into redirects through mailnode and adds the open pixel, and leaves every
other byte of the document as authored.
"""

from __future__ import annotations

import enum
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.entities import html5 as _HTML5_REFERENCES

OPENS, LINKS = "opens", "links"
AXES = (OPENS, LINKS)


class TrackingPolicyError(ValueError):
    """A tracking policy that cannot be used; `path` names the JSON field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class TrackingMode(enum.StrEnum):
    """How much a tracked open or click may tell about its recipient, from none to everything."""

    # Declared in order: each mode keeps strictly more than the one before it.
    OFF = "off"  # no pixel, no rewritten links
    ANONYMOUS = "anonymous"  # an aggregate counter per batch; all recipients look alike
    PSEUDONYMOUS = "pseudonymous"  # events under a random per-message pseudonym
    IDENTIFIED = "identified"  # events under the recipient address
    FULL = "full"  # as identified, plus IP address and User-Agent

    @property
    def rank(self) -> int:
        """The mode's place on the scale: off is 0, full is 4."""
        return _RANKS[self]


_RANKS = {mode: rank for rank, mode in enumerate(TrackingMode)}
_ALLOWED = ", ".join(TrackingMode)
_NOT_AN_OBJECT = 'must be a JSON object like {"opens": "off", "links": "identified"}'


def strictest(*modes: TrackingMode) -> TrackingMode:
    """The mode that keeps the least of those given."""
    return min(modes, key=_RANKS.__getitem__)


def parse_mode(value: object, path: str) -> TrackingMode:
    """A tracking mode from its JSON string; raise TrackingPolicyError naming path otherwise."""
    if not isinstance(value, str):
        raise TrackingPolicyError(path, f"must be a string, one of {_ALLOWED}")
    try:
        return TrackingMode(value)
    except ValueError:
        raise TrackingPolicyError(
            path, f"{value[:40]!r} is not a tracking mode; use one of {_ALLOWED}"
        ) from None


@dataclass(frozen=True, slots=True)
class TrackingPolicy:
    """A concrete policy (the domain's ceiling, or what a delivery is tracked under)."""

    opens: TrackingMode
    links: TrackingMode

    @classmethod
    def parse(cls, value: object, path: str) -> TrackingPolicy:
        """A domain policy from a JSON object; an axis left out (or null) is off, as in Kannon."""
        if value is None:
            raise TrackingPolicyError(path, _NOT_AN_OBJECT)
        stated = parse_stated(value, path)
        return cls(stated.opens or TrackingMode.OFF, stated.links or TrackingMode.OFF)

    def to_json(self) -> dict[str, str]:
        """The policy as a JSON object."""
        return {OPENS: self.opens.value, LINKS: self.links.value}


@dataclass(frozen=True, slots=True)
class StatedPolicy:
    """What a batch or a recipient states; None on an axis means unstated (imposes nothing)."""

    opens: TrackingMode | None = None
    links: TrackingMode | None = None

    def to_json(self) -> dict[str, str]:
        """The stated axes as a JSON object (unstated axes left out)."""
        axes = {OPENS: self.opens, LINKS: self.links}
        return {axis: mode.value for axis, mode in axes.items() if mode is not None}


def parse_stated(value: object, path: str) -> StatedPolicy:
    """A batch or recipient policy from JSON; null, or an axis left out, is unstated."""
    if value is None:
        return StatedPolicy()
    if not isinstance(value, Mapping):
        raise TrackingPolicyError(path, _NOT_AN_OBJECT)
    for key in value:
        if key not in AXES:
            raise TrackingPolicyError(f"{path}.{key}", f"unknown field (known: {', '.join(AXES)})")
    return StatedPolicy(*(_stated_mode(value.get(axis), f"{path}.{axis}") for axis in AXES))


def _stated_mode(value: object, path: str) -> TrackingMode | None:
    return None if value is None else parse_mode(value, path)


def check_within_ceiling(ceiling: TrackingPolicy, stated: StatedPolicy | None, path: str) -> None:
    """Raise TrackingPolicyError naming the first axis stated above the ceiling.

    A policy above the domain's ceiling is refused, never clamped: the sender asked for more
    than the domain owner allows, and silently tracking less would hide that (Kannon: a batch
    is refused whole, a recipient is rejected alone; the caller decides which).
    """
    if stated is None:
        return
    for axis, limit, mode in ((OPENS, ceiling.opens, stated.opens), (LINKS, ceiling.links, stated.links)):
        if mode is not None and mode.rank > limit.rank:
            raise TrackingPolicyError(
                f"{path}.{axis}", f"{mode.value!r} is above the domain's ceiling {limit.value!r}"
            )


def effective_policy(
    ceiling: TrackingPolicy, batch: StatedPolicy | None, recipient: StatedPolicy | None
) -> TrackingPolicy:
    """Per axis the strictest stated mode; an unstated level imposes nothing."""
    return TrackingPolicy(
        _effective(ceiling.opens, *(level.opens for level in (batch, recipient) if level)),
        _effective(ceiling.links, *(level.links for level in (batch, recipient) if level)),
    )


def _effective(ceiling: TrackingMode, *stated: TrackingMode | None) -> TrackingMode:
    return strictest(ceiling, *(mode for mode in stated if mode is not None))


# -- HTML rewriting ----------------------------------------------------------------------------

# HTML's own white space (WHATWG "ASCII whitespace"), an attribute value as the tokenizer reads
# it after "=" (HTML §13.2.5.36-38: double-quoted, single-quoted or unquoted), and a character
# that may be part of an attribute name (§13.2.5.33).
_SPACE = r"[\t\n\r\f ]"
_VALUE = r"(?:\"[^\"]*+\"?|'[^']*+'?|[^\t\n\r\f >]*+)"
_NAME_CHAR = r"[^\t\n\r\f />=]"
# One linear pass finds the two things the rewriter changes: an opening <a> tag (its attributes
# run to the first ">" outside a quoted value, HTML §13.2.5) and an end tag </body>. Nothing
# else is parsed, so nothing else can be mangled. Possessive quantifiers never backtrack, and an
# <a> tag still open at the end of the input runs to the end ("eof-in-tag") instead of failing
# and being rescanned from every later "<": linear time. Letters are spelled out in both cases
# rather than with re.IGNORECASE, which is slower and also folds non-ASCII look-alikes.
_MARKUP = re.compile(
    rf"<(?:[aA](?=[\t\n\r\f />])((?:[^>=]++|={_SPACE}*+{_VALUE})*+)(>)?"
    rf"|/[bB][oO][dD][yY]{_SPACE}*+>)"
)
# One attribute of a tag: the white space before it, its name, and its value as written
# (quotes included). Characters that start no attribute ("/", a stray "=") are skipped.
_ATTRIBUTE = re.compile(rf"({_SPACE}*+)({_NAME_CHAR}++)(?:{_SPACE}*+={_SPACE}*+({_VALUE}))?")
# The value of the first href attribute, read with the same grammar as _ATTRIBUTE: skip whole
# attributes with other names, then match href itself. A browser keeps the first of repeated
# attributes (HTML §13.2.5.33), so that is the link a reader follows.
_HREF_NAME = r"[hH][rR][eE][fF]"
_FIRST_HREF = re.compile(
    rf"(?:[\t\n\r\f /=]++|(?!{_HREF_NAME}(?!{_NAME_CHAR})){_NAME_CHAR}++"
    rf"(?:{_SPACE}*+={_SPACE}*+{_VALUE})?)*+"
    rf"{_HREF_NAME}{_SPACE}*+={_SPACE}*+({_VALUE})"
)
_NO_TRACK = "data-no-track"
# Only web links are redirected: a redirect to mailto:, tel:, a relative path (no base to resolve
# against in a mailbox) or javascript: would break the link or run script from our origin.
_TRACKABLE = re.compile(r"[hH][tT][tT][pP][sS]?://[^/?#\s]")
# Character references as html.unescape finds them (HTML §13.2.5.72).
_REFERENCE = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_PIXEL = '<img src="{}" width="1" height="1" alt="" style="display:none" />'


def is_trackable_url(url: str) -> bool:
    """True for an absolute http or https URL, the only links worth redirecting."""
    return _TRACKABLE.match(url) is not None


def unescape_attribute(value: str) -> str:
    """An attribute value with character references decoded as a browser decodes them.

    html.unescape reads "&region=eu" as "®ion=eu"; in an attribute value HTML keeps a
    reference without ";" literal when "=" or a letter or digit follows it (HTML §13.2.5.73),
    which is what keeps carelessly written query strings working in browsers.
    """
    if "&" not in value:
        return value
    if "&" not in value.replace("&amp;", ""):
        return value.replace("&amp;", "&")  # the usual case, without a call per reference
    return _REFERENCE.sub(_attribute_reference, value)


def _attribute_reference(match: re.Match[str]) -> str:
    name = match.group(1)
    if name.startswith("#"):
        return html.unescape(match.group(0))
    if name in _HTML5_REFERENCES:
        return _HTML5_REFERENCES[name]
    for end in range(len(name) - 1, 1, -1):
        if name[:end] in _HTML5_REFERENCES:
            following = name[end]
            if following == "=" or (following.isascii() and following.isalnum()):
                return match.group(0)
            return _HTML5_REFERENCES[name[:end]] + name[end:]
    return match.group(0)


def rewrite_html(
    document: str, *, link_url: Callable[[str], str | None] | None, pixel_url: str | None
) -> str:
    """The document with trackable links sent through link_url and the open pixel added.

    link_url gets each trackable href decoded (entities resolved, white space stripped) and
    returns the URL to put in its place, or None to leave that link as authored. Links with a
    data-no-track attribute are never rewritten; the attribute itself is always removed.
    """
    if link_url is None and pixel_url is None and _NO_TRACK not in document.lower():
        return document
    pixel = None if pixel_url is None else _PIXEL.format(html.escape(pixel_url, quote=True))
    rewriter = _Rewriter(link_url, pixel)
    rewritten = _MARKUP.sub(rewriter, document)
    if rewriter.pixel is not None:
        # No </body>: the pixel goes at the very end. HTML parsers put content found after the
        # body (or with no body tags at all, as in a fragment) into the body (HTML §13.2.6.4.19
        # "after body"), so it renders exactly as before </body> would. Kannon sent no pixel.
        rewritten += rewriter.pixel
    return rewritten


class _Rewriter:
    """The replacement for each _MARKUP match; remembers whether the pixel is placed yet."""

    __slots__ = ("link_url", "pixel")

    def __init__(self, link_url: Callable[[str], str | None] | None, pixel: str | None) -> None:
        self.link_url = link_url
        self.pixel = pixel

    def __call__(self, match: re.Match[str]) -> str:
        attributes = match.group(1)
        if attributes is None:
            return self._end_body(match.group(0))
        if match.group(2) is None:
            return match.group(0)  # a tag the input never closes: not a link anyone sees
        lower = attributes.lower()
        edits = _no_track_removals(attributes) if _NO_TRACK in lower else []
        if not edits and self.link_url is not None and "href" in lower:
            edits = self._href_rewrite(attributes)
        return _apply(match.group(0), match.start(1) - match.start(), edits)

    def _end_body(self, end_tag: str) -> str:
        # Only the first </body>: a document has one body, later ones are stray.
        pixel, self.pixel = self.pixel, None
        return end_tag if pixel is None else pixel + end_tag

    def _href_rewrite(self, attributes: str) -> list[tuple[int, int, str]]:
        href = _FIRST_HREF.match(attributes)
        if href is None or not href.group(1) or self.link_url is None:
            return []  # no href, or <a href=""> with nothing to follow
        written = href.group(1)
        quote = written[0] if written[0] in "\"'" else ""
        url = unescape_attribute(written[len(quote) :].removesuffix(quote)).strip()
        new_url = self.link_url(url) if is_trackable_url(url) else None
        if new_url is None:
            return []
        quote = quote or '"'
        return [(href.start(1), href.end(1), f"{quote}{html.escape(new_url, quote=True)}{quote}")]


def _no_track_removals(attributes: str) -> list[tuple[int, int, str]]:
    """Edits that cut every data-no-track attribute (and the white space before it) out."""
    return [
        (attribute.start(), attribute.end(), "")
        for attribute in _ATTRIBUTE.finditer(attributes)
        if attribute.group(2).isascii() and attribute.group(2).lower() == _NO_TRACK
    ]


def _apply(text: str, offset: int, edits: list[tuple[int, int, str]]) -> str:
    """text with each (start, end, replacement) applied at offset; edits in order, disjoint."""
    parts: list[str] = []
    position = 0
    for start, end, replacement in edits:
        parts += (text[position : offset + start], replacement)
        position = offset + end
    parts.append(text[position:])
    return "".join(parts)


# -- machine requests --------------------------------------------------------------------------

# User-Agent substrings (matched case-insensitively) of software that fetches links and images
# on a recipient's behalf, so an open or click it makes is not a person reading (Kannon #412).
# Apple Mail Privacy Protection and most webmail image proxies send ordinary browser-like
# User-Agents, so they cannot be told apart here; opens are a lower bound of interest at best.
_MACHINE_AGENTS = (
    # Crawlers and bots that say so, and the link previewers of chat and social apps
    # (Slackbot, Twitterbot, SkypeUriPreview, facebookexternalhit) when a mail is forwarded.
    "bot",
    "spider",
    "crawler",
    "preview",
    "facebookexternalhit",
    # HTTP libraries that do not pretend to be a browser: scripts and home-grown scanners.
    # (Not okhttp: Android mail apps fetch images with it for a person who opened the mail.)
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl",
    "wget",
    "go-http-client",
    "libwww-perl",
    "java/",
    # Secure email gateways that follow every link of a message before or at delivery.
    "barracuda",
    "mimecast",
    "proofpoint",
    # Gmail fetches images through its proxy, sometimes when the mail arrives rather than when
    # it is read: an open via the proxy is real-ish but machine-fetched, so it is flagged.
    "googleimageproxy",
    "yahoomailproxy",
)
_MACHINE_AGENT = re.compile("|".join(map(re.escape, _MACHINE_AGENTS)), re.IGNORECASE)


def is_machine_request(method: str, user_agent: str | None) -> bool:
    """True when a tracking hit looks made by software rather than by a person reading."""
    if method == "HEAD":
        return True  # link checkers probe with HEAD; a browser following a link sends GET
    if user_agent is None or not user_agent.strip():
        return True  # every browser and mail client sends a User-Agent
    return _MACHINE_AGENT.search(user_agent) is not None
