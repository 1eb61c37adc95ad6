"""Peer (c) of `bench --only serve`: what a user would hand-write to serve GPT-2 with optimum,
ORTModelForCausalLM (INT8) behind a minimal FastAPI endpoint streaming /v1/completions.

    python -m gpt2_onnx.benchmarks.optimum_server --artifact DIR --tokenizer CHECKPOINT --port P

`model.generate(..., streamer=...)` runs in a worker thread; the streamer hands each new token
to the event loop, which sends it as one SSE chunk. A lock makes requests take turns:
generate() decodes a fixed batch and cannot take in a request that arrives mid-way.
Only what the benchmark's client sends is read (prompt, max_tokens); it is greedy and, like
every server in the benchmark, runs to max_tokens (no end-of-text stop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from .engines import _hf_generate, optimum_model


class _QueueStreamer(BaseStreamer):
    """generate()'s streamer: every new token id into an asyncio queue, from generate's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() puts the prompt ids first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, token)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def create_app(model, tokenizer, prefix_ids: list[int]) -> FastAPI:
    app = FastAPI()
    turn = asyncio.Lock()  # one request decodes at a time
    generate = _hf_generate(model)  # the benchmark's greedy generate(), to max_tokens

    async def stream(ids: list[int], max_tokens: int) -> AsyncIterator[str]:
        async with turn:
            queue: asyncio.Queue = asyncio.Queue()
            job = asyncio.ensure_future(
                asyncio.to_thread(generate, [ids], max_tokens, _QueueStreamer(asyncio.get_running_loop(), queue))
            )
            job.add_done_callback(lambda _: queue.put_nowait(None))  # ends the loop below if generate() raises
            tokens = 0
            while (token := await queue.get()) is not None:
                tokens += 1
                yield _sse(
                    {
                        "object": "text_completion",
                        "choices": [{"index": 0, "text": tokenizer.decode([token]), "finish_reason": None}],
                    }
                )
            await job
        usage = {"prompt_tokens": len(ids), "completion_tokens": tokens, "total_tokens": len(ids) + tokens}
        yield _sse({"object": "text_completion", "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()
        # the family's prefix ([CLS] for uer) as gpt2-onnx starts prompts, so both count the same ids
        ids = prefix_ids + tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        return StreamingResponse(stream(ids, int(body.get("max_tokens", 16))), media_type="text/event-stream")

    return app


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="optimum's INT8 export (benchmarks.engines)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="the checkpoint directory, for its tokenizer")
    parser.add_argument("--prefix-ids", default="[]", help="JSON list of ids every prompt starts with")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    app = create_app(
        optimum_model(args.artifact, args.threads),
        AutoTokenizer.from_pretrained(args.tokenizer),
        json.loads(args.prefix_ids),
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")  # loopback only


if __name__ == "__main__":
    main()
