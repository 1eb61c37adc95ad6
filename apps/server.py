"""`create_app`: the OpenAI-compatible HTTP server (FastAPI) over one engine.

    POST /v1/completions, /v1/chat/completions ─> key │ body size │ JSON │ Job │ model │ submit
         ─> wait for every choice (raced against the client's http.disconnect) ─> one body
         ─> or stream: SSE chunks as events arrive, `data: [DONE]` last
    POST /tokenize, /detokenize (llama-server's and vLLM's shapes) ─> key │ body size │ JSON │ model │ the tokenizer
    GET /v1/models, /health (503 while the model loads; no key), /metrics (Prometheus; no key)

Any way a handler ends early (client gone, error) cancels its engine requests: their rows
leave at the next step. The model loads in a thread at startup, so /health answers at once.
A call that fails once its stream has begun (the engine failed, the server stops answering:
`close_calls`) ends with one `data: {"error": {...}}` chunk in OpenAI's error shape, no [DONE].
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from gpt2_onnx.errors import GenerationOptionError, Gpt2OnnxError
from gpt2_onnx.generator import Generator

from . import openai_api, tokenize_api
from .bridge import Call, ClientGone, Service
from .metrics import Metrics
from .openai_api import ApiError, Job
from .settings import Settings


class _State:
    """What the app holds: the service once the model is loaded, and whether it stopped answering."""

    def __init__(self) -> None:
        self.service: Service | None = None
        self.load_error: str | None = None
        self.closing = asyncio.Event()  # set by close_calls


def close_calls(app: FastAPI) -> None:
    """End every open call now (from the app's event loop): a stream gets an error event and ends, a
    waiting request a 503. For a shutdown whose grace period is over, instead of cancelled handlers."""
    app.state.gpt2_onnx.closing.set()


def create_app(
    generator: Generator | Callable[[], Generator],
    settings: Settings,
    on_load: Callable[[Service | None, str | None], None] | None = None,
) -> FastAPI:
    """The app; `generator` may be a loader, run in a thread at startup (/health says 503 until
    done). `on_load(service, None)` or `on_load(None, error)` is called when loading ends."""
    state = _State()
    metrics = Metrics(lambda: state.service.stats() if state.service else None)

    def load() -> None:
        try:
            loaded = generator if isinstance(generator, Generator) else generator()
            service = Service(loaded, settings.capacity)
            service.start(metrics)
            state.service = service
        except Exception as e:  # reported by /health and on_load rather than lost in a thread
            state.load_error = str(e) if isinstance(e, Gpt2OnnxError) else f"{type(e).__name__}: {e}"
        if on_load:
            on_load(state.service, state.load_error)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load, name="gpt2-onnx-load", daemon=True).start()
        yield
        if state.service:
            state.service.stop()

    app = FastAPI(title="gpt2-onnx", lifespan=lifespan)
    app.state.gpt2_onnx = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", kind="server_error").body()
        return JSONResponse(body, status_code=500)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.service is None:
            status = {"status": "error", "error": state.load_error} if state.load_error else {"status": "loading"}
            return JSONResponse(status, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        _check_key(request, settings.api_key)
        card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "gpt2-onnx"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _answer(request, openai_api.completion_job(await _body(request, settings)))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _answer(request, openai_api.chat_job(await _body(request, settings), settings.chat_template))

    @app.post("/tokenize")
    async def tokenize(request: Request) -> JSONResponse:
        job = tokenize_api.tokenize_job(await _body(request, settings))
        generator = _service(job.model).generator
        ids = generator.encode(job.text, job.add_special)
        pieces = [generator.token_text(t) for t in ids] if job.with_pieces or job.token_strs else []
        limit = generator.manifest.architecture.n_positions
        return JSONResponse(tokenize_api.tokenize_response(job, ids, pieces, limit))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> JSONResponse:
        model, tokens = tokenize_api.detokenize_job(await _body(request, settings))
        generator = _service(model).generator
        try:
            ids = generator.check_ids(tokens, "tokens")
        except GenerationOptionError as e:
            raise ApiError(400, str(e), "tokens", "invalid_value") from None
        return JSONResponse(tokenize_api.detokenize_response(generator.decode(ids)))

    def _service(model: str | None) -> Service:
        """The service, once `model` (None: not named) is this server's and loaded (404, 503 otherwise)."""
        if model is not None and model != settings.model_name:
            raise ApiError(
                404,
                f"the model {model!r} does not exist; this server serves {settings.model_name!r}",
                "model",
                "model_not_found",
            )
        if state.service is None:
            raise ApiError(
                503, "the model is still loading; retry when GET /health says ok", None, None, "server_error"
            )
        return state.service

    async def _answer(request: Request, job: Job) -> Response:
        call = _service(job.model).submit(job)
        ended = asyncio.ensure_future(_ended(request, state.closing))
        if job.stream:
            return StreamingResponse(_stream(call, ended, settings.model_name), media_type="text/event-stream")
        try:
            while call.remaining:
                await call.next(ended)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        finally:
            ended.cancel()
            call.cancel()
        return JSONResponse(
            openai_api.response(
                job, settings.model_name, call.choices, call.prompt_texts, call.prompt_tokens, call.cached_tokens
            )
        )

    return app


def _check_key(request: Request, key: str | None) -> None:
    """`Authorization: Bearer KEY`, the scheme in any case (RFC 7235)."""
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip(" ") if scheme.lower() == "bearer" else ""
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        what = "a wrong API key" if token else "no API key"
        raise ApiError(
            401,
            f"{what} was given: send the server's key as `Authorization: Bearer KEY`",
            None,
            "invalid_api_key",
            "authentication_error",
        )


async def _body(request: Request, settings: Settings) -> object:
    """The JSON body, read with a size limit (413) and parsed (400)."""
    _check_key(request, settings.api_key)
    limit = settings.max_body_bytes
    too_large = ApiError(
        413,
        f"the request body is larger than {limit} bytes; send a shorter prompt "
        "(or start the server with a larger --max-body-bytes)",
        None,
        "request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise too_large
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(
            400, f"the request body is not valid JSON ({e}); send a JSON object", None, "invalid_json"
        ) from None
    except RecursionError:
        raise ApiError(
            400,
            "the request body nests JSON arrays or objects too deeply to read; send a flat request object",
            None,
            "invalid_json",
        ) from None


async def _ended(request: Request, closing: asyncio.Event) -> Exception:
    """What ends a call before its answer is complete, once it happens: ClientGone when the client
    disconnects (the ASGI http.disconnect message, after the body), a 503 ApiError on `closing`."""
    gone, closed = asyncio.ensure_future(_disconnected(request)), asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait((gone, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        closed.cancel()
    if gone.done() and not gone.cancelled():
        return ClientGone()
    return ApiError(
        503,
        "the server is shutting down and its grace period (--grace-period) ended before this answer "
        "was complete; retry on a running server",
        None,
        "server_shutting_down",
        "server_error",
    )


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(call: Call, ended: asyncio.Future, model: str) -> AsyncIterator[str]:
    """SSE chunks of every choice as their events arrive, then usage (if asked) and [DONE]; or,
    once the call fails, an error chunk in OpenAI's shape."""
    job, sent = call.job, set()
    try:
        if job.echo:
            for index in range(len(call.choices)):
                sent.add(index)
                yield _sse(openai_api.chunk(job, model, index, call.prompt_texts[index // job.n], None, [], first=True))
        while call.remaining:
            index, event = await call.next(ended)
            if not (event.text or event.finish_reason or event.logprobs):
                continue  # text held back (a possible stop string, an incomplete character)
            entries = call.choices[index].logprobs[len(call.choices[index].logprobs) - len(event.logprobs or ()) :]
            offset = len(call.choices[index].text) - len(event.text)
            yield _sse(
                openai_api.chunk(
                    job, model, index, event.text, event.finish_reason, entries, offset, first=index not in sent
                )
            )
            sent.add(index)
        if job.include_usage:
            completion = sum(c.tokens for c in call.choices)
            yield _sse(openai_api.usage_chunk(job, model, call.prompt_tokens, completion, call.cached_tokens))
        yield "data: [DONE]\n\n"
    except ClientGone:
        return
    except ApiError as error:
        yield _sse(error.body())
    finally:
        ended.cancel()
        call.cancel()


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
