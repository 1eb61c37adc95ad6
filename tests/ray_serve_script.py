"""The Ray Serve checks of tests/test_ray_serve.py on one local cluster, run inside a private
network namespace by that module. Prints one JSON object of what it saw."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import openai
import ray
from ray import serve

from gpt2_onnx.apps.cli import build_parser
from gpt2_onnx.apps.ray_serve import APP_NAME, build_application
from gpt2_onnx.apps.serve import ray_settings_from, settings_from
from gpt2_onnx.generator import Generator

PORT = 8765
PROMPT = "这是很久之前的事情了"
LONG_PROMPT = PROMPT * 4  # 41 tokens: two blocks of the prefix cache
GUIDED_REGEX = "[0-9]{1,4}"


def replica_names() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "REPLICA" in a["name"].upper())


def running_replicas() -> int:
    status = serve.status().applications[APP_NAME].deployments["gpt2-onnx"]
    return status.replica_states.get("RUNNING", 0)


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}


def main(model: str) -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    # the settings `gpt2-onnx serve --ray` makes of its command line (the prefix cache's default included)
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            model,
            "--precision",
            "fp32",
            "--threads",
            "1",
            "--port",
            str(PORT),
            "--replicas",
            "2",
            "--ray",
        ]
    )
    model_settings, server_settings = settings_from(args)
    serve.run(
        build_application(ray_settings_from(args, model_settings), server_settings), name=APP_NAME, route_prefix="/"
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="unused", max_retries=0, timeout=120)
    model_id = client.models.list().data[0].id
    greedy = dict(model=model_id, prompt=PROMPT, max_tokens=8, temperature=0)
    results = {"replicas": len(replica_names()), "node": ray.nodes()[0]["NodeManagerAddress"]}
    results["text"] = client.completions.create(**greedy).choices[0].text
    results["streamed"] = "".join(
        c.choices[0].text for c in client.completions.create(**greedy, stream=True) if c.choices
    )
    local = Generator.load(model, precision="fp32")
    results["local"] = local.generate(PROMPT, max_new_tokens=8, do_sample=False).text

    # replicas keep a prefix cache: a repeated long prompt is served from it, with the same text
    long = {**greedy, "prompt": LONG_PROMPT}
    results["cached"] = [client.completions.create(**long).choices[0].text for _ in range(6)]
    results["cached_local"] = local.generate(LONG_PROMPT, max_new_tokens=8, do_sample=False).text
    gauges = [metrics(f"http://127.0.0.1:{PORT}") for _ in range(12)]  # each read answered by either replica
    results["prefix_cache_bytes"] = max(g["gpt2_onnx_prefix_cache_bytes"] for g in gauges)
    results["prefix_cache_hits"] = max(g["gpt2_onnx_prefix_cache_hits"] for g in gauges)

    # structured output through the replicas: each one builds its constraint vocabulary at load
    # (the bridge's prepare_constraints), so every request of a few is held to the regex, as locally
    guided = {**greedy, "extra_body": {"guided_regex": GUIDED_REGEX}}
    results["guided"] = [client.completions.create(**guided).choices[0].text for _ in range(4)]
    results["guided_regex"] = GUIDED_REGEX
    constraint = {"regex": GUIDED_REGEX}
    results["guided_local"] = local.generate(PROMPT, max_new_tokens=8, do_sample=False, constraint=constraint).text

    # requests in flight while one replica's actor is killed: each succeeds or fails with a 5xx
    outcomes: list[str] = []

    def long_request() -> None:
        try:
            client.completions.create(model=model_id, prompt=PROMPT, max_tokens=100, temperature=0)
            outcomes.append("ok")
        except openai.APIStatusError as e:
            outcomes.append(f"status {e.status_code}")
        except openai.APIConnectionError as e:
            outcomes.append(f"connection {type(e).__name__}")

    threads = [threading.Thread(target=long_request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    ray.kill(ray.get_actor(replica_names()[0], namespace="serve"), no_restart=False)
    for t in threads:
        t.join()
    results["in_flight"] = outcomes
    results["after_kill"] = [client.completions.create(**greedy).choices[0].text for _ in range(6)]
    deadline = time.monotonic() + 180
    while running_replicas() < 2 and time.monotonic() < deadline:
        time.sleep(1)
    results["running_after"] = running_replicas()
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1])
