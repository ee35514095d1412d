"""The Jinja2 templates of what people read: the run report (HTML and Prefect Markdown) and the
review page. HTML templates (``*.html.j2``) are autoescaped; Markdown ones escape with ``md``.

Example
-------
>>> render("report.md.j2", title="t", summary=summary, studies=[])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import re

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

# Characters with a meaning inside a Markdown line (a table cell's pipe included), escaped with a
# backslash; values never start a line, so list and heading markers need none.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|])")


def markdown_escape(value: object) -> str:
    """``value`` as literal Markdown text: special characters escaped, no line breaks."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(value).split()))


@functools.cache
def environment() -> Environment:
    """The one template environment (templates in this package, loaded once)."""
    env = Environment(loader=PackageLoader("flows", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                                   default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters["md"] = markdown_escape
    return env


def render(name: str, **context: object) -> str:
    """The template ``name`` rendered with ``context``."""
    return environment().get_template(name).render(**context)
