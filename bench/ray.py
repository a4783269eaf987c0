"""``python -m bench.ray``: what the Ray Serve path (plugins/ray-serve) adds to a request.

A 1-token completion of a tiny model, sent alternately to a single llama-router and to the Ray
Serve application (HTTP proxy → ingress replica → router replica → the same kind of router),
each over one keep-alive connection, on a local Ray cluster started here (loopback, 2 CPUs, no
dashboard). Prints p50/p90/p99 and what Ray adds at the p50; ``--out DIR`` also writes
``DIR/ray.json`` in bench.json's shape. Needs Ray: ``pip install -e "plugins/ray-serve[ray]"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import harness
from bench.harness import Results, percentile

WARM_UP = 20
ARGS = ("-t", "1", "-c", "512")  # as the latency section of python -m bench


def one_token_ms(client: httpx.Client, base: str) -> float:
    body = {"model": "a", "prompt": "x", "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    client.post(f"{base}/v1/completions", json=body).raise_for_status()
    return (time.perf_counter() - start) * 1000


def measure(models_dir: Path, n: int, results: Results) -> None:
    import ray
    from ray import serve

    from llama_router_ray_serve import AppSettings, build_app

    router_port, ray_port = harness.free_port(), harness.free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": ray_port})
        settings = AppSettings(
            conf_dir=None,  # the model comes from models_dir, as the single router's does
            models_dir=str(models_dir),
            models_per_replica=1,
            min_replicas=1,
            max_replicas=1,
            router_args=("--spares", "0", "--no-plugins", *ARGS),
        )
        serve.run(build_app(settings), name="bench", route_prefix="/")
        with harness.serve(
            harness.our_router(models_dir, router_port, "--spares", "0", *ARGS), router_port
        ) as router:
            systems = {"llama-router": router.base_url, "ray-serve": f"http://127.0.0.1:{ray_port}"}
            samples: dict[str, list[float]] = {name: [] for name in systems}
            with httpx.Client(timeout=120) as client:
                for _ in range(WARM_UP):  # loads the model on both, fills the connections
                    for base in systems.values():
                        one_token_ms(client, base)
                for _ in range(n):
                    for name, base in systems.items():
                        samples[name].append(one_token_ms(client, base))
    finally:
        serve.shutdown()
        ray.shutdown()
    for system, values in samples.items():
        for fraction, label in ((0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")):
            results.add("ray_latency", system, label, percentile(values, fraction), "ms")
    added = percentile(samples["ray-serve"], 0.5) - percentile(samples["llama-router"], 0.5)
    results.add("ray_added_latency", "ray-serve", "p50_added_ms", added, "ms")
    ratio = percentile(samples["ray-serve"], 0.5) / percentile(samples["llama-router"], 0.5)
    results.add("ray_added_latency", "ray-serve", "p50_ratio", ratio, "x")


def table(results: Results) -> str:
    rows = ["| system | p50 ms | p90 ms | p99 ms |", "|---|---|---|---|"]
    for system in ("llama-router", "ray-serve"):
        cells = [results.get("ray_latency", system, f"p{p}_ms") for p in (50, 90, 99)]
        rows.append(f"| {system} | " + " | ".join(f"{cell:.2f}" for cell in cells if cell) + " |")
    added = results.get("ray_added_latency", "ray-serve", "p50_added_ms")
    ratio = results.get("ray_added_latency", "ray-serve", "p50_ratio")
    rows.append(f"\nRay Serve adds {added:+.2f} ms at the p50 ({ratio:.2f}x).")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=300, help="requests per system (default: 300)")
    parser.add_argument("--out", type=Path, help="write ray.json here")
    args = parser.parse_args()
    results = Results()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="llama-router-bench-ray-") as scratch:
        models_dir = Path(scratch)
        harness.write_tiny_models(models_dir, "a")
        measure(models_dir, args.n, results)
    results.note(
        f"Load average (1 min) {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the "
        f"end, on {os.cpu_count()} CPUs; {args.n} requests per system, interleaved."
    )
    print(table(results))
    print("\n".join(f"- {note}" for note in results.notes))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results.write_json(args.out / "ray.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
