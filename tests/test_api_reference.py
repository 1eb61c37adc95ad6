"""The README's request-field table is the parsers' own: every field /v1/completions and /v1/chat/completions
read is a row for that endpoint, and every row is a field its endpoint reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2_onnx.apps import api_fields, api_reference
from gpt2_onnx.apps.openai_api import chat_job, completion_job

ROOT = Path(__file__).resolve().parent.parent


def _fields_read(parse, monkeypatch) -> set[str]:
    """The top-level fields `parse` reads from a minimal valid body (it reads every field it supports)."""
    read: set[str] = set()
    refuse = api_fields.Fields.refuse_unread

    def recording(self):
        if not self.prefix:
            read.update(self.read)
        refuse(self)

    monkeypatch.setattr(api_fields.Fields, "refuse_unread", recording)
    parse()
    return read


@pytest.mark.parametrize(
    "endpoint, parse",
    [
        (api_reference.COMPLETIONS, lambda: completion_job({"model": "m", "prompt": "x"})),
        (
            api_reference.CHAT,
            lambda: chat_job({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "{content}"),
        ),
    ],
)
def test_the_table_lists_exactly_the_fields_each_endpoint_reads(endpoint, parse, monkeypatch):
    documented = {f.name for f in api_reference.api_fields() if endpoint in f.endpoints}
    assert _fields_read(parse, monkeypatch) == documented


def test_every_field_has_a_default_and_the_readme_serve_section_holds_the_table():
    assert all(f.default and f.what for f in api_reference.api_fields())
    names = [f.name for f in api_reference.api_fields()]
    assert len(names) == len(set(names))
    readme = (ROOT / "README.md").read_text()
    serve = readme[readme.index("### Serve (OpenAI-compatible HTTP)") : readme.index("### Batch jobs, and scaling out")]
    assert api_reference.markdown_table() in serve, (
        "README.md's Serve field table is stale: paste apps/api_reference.markdown_table() into it"
    )
