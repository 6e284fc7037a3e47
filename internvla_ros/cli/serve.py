"""``internvla serve``: the policy as an HTTP inference server on Ray Serve, batched across robots.

Usage examples::

    internvla serve --model models/default                       # local Ray, http://127.0.0.1:8000
    internvla serve --model DIR --replicas 2 --max-batch-size 8 --batch-wait-ms 10
    internvla serve --model DIR --host 0.0.0.0 --token-file /etc/internvla/token   # reachable: token required
    internvla serve --model DIR --address ray://head:10001      # on a running Ray cluster

Endpoints: POST /infer (a runtime/wire.py frame in and out), GET /health, GET /metadata, GET /stats
(internvla_ros/serve/app.py). A policy node uses it with its parameter
``inference_endpoint:=http://HOST:PORT`` (and ``inference_token_file`` when the server has a token).
Serves until SIGINT or SIGTERM. Exits 2 when the settings cannot work (no model, no token for a
reachable host).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvla_ros.cli.groups import add_noise_scale, add_verb
from internvla_ros.paths import default_model_dir
from internvla_ros.runtime.errors import PolicyRuntimeError


def command(args: argparse.Namespace) -> int:
    from internvla_ros.serve.server import ServerSettings, serve_until_stopped

    settings = ServerSettings(
        model=(args.model or default_model_dir()).resolve(), policy=args.policy, backend=args.backend, dtype=args.dtype,
        tokenizer=args.tokenizer, threads=args.threads, replicas=args.replicas, max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms, host=args.host, port=args.port, address=args.address,
        token_file=args.token_file, max_request_bytes=round(args.max_request_mb * (1 << 20)),
        replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus, noise_scale=args.noise_scale)
    try:
        return serve_until_stopped(settings, ready=lambda url: print(
            f"internvla serve: ready at {url} ({settings.replicas} replica(s), batches of up to "
            f"{settings.max_batch_size} within {settings.batch_wait_ms:g} ms)", flush=True))
    except PolicyRuntimeError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(subparsers, "serve", "the policy as an HTTP inference server on Ray Serve", __doc__)
    parser.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: models/default)")
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime, tensorrt, or a preference list")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas (default: 1)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="requests per model call (default: 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long a batch that is not full waits for more requests [ms], up to 4x as long "
                        "while a request's body is still being read (default: 10; on a CPU a short wait pays: "
                        "a server idling for full batches loses more than batching gains)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default=None, help="a running Ray cluster's address (default: a local Ray)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the bearer token clients must send; required off loopback")
    parser.add_argument("--policy", default="internvla",
                        help="registered policy name (internvla_ros.policies entry points; default: internvla)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--tokenizer", default=None, help="Qwen tokenizer directory (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads per replica; with "
                        "onnxruntime also a batch's observations computed at once (default: 1)")
    parser.add_argument("--max-request-mb", type=float, default=32.0, help="largest /infer body [MiB] (default: 32)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica")
    parser.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves per replica")
    add_noise_scale(parser)
    parser.set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    """`python -m internvla_ros.cli.serve ...` = `internvla serve ...` (what the demo starts: no other verb loads)."""
    parser = argparse.ArgumentParser(prog="internvla")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
