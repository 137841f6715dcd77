"""The ``vlpserve`` command: thin adapters over the library functions.

Errors of the VlpserveError tree become one clear line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from vlpserve import __version__
from vlpserve.contract import DECODE, IMAGE_FORMATS, Family
from vlpserve.errors import ConfigError, VlpserveError

EXPORTABLE = (Family.CLIP, Family.GROUPVIT, Family.BLIP, Family.SIGLIP)


def gpu_ids(text: str) -> tuple[int, ...]:
    """``0,1,3`` -> (0, 1, 3), for argparse."""
    from vlpserve.model_repository.config import gpu_ids_problem

    try:
        found = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected GPU ids such as 0,1: {text!r}") from exc
    if not found or gpu_ids_problem(found):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids >= 0: {text!r}")
    return found


def cmd_export(args: argparse.Namespace) -> int:
    from vlpserve.export import ExportOptions, export
    from vlpserve.progress import progress

    options = ExportOptions(
        model=args.model,
        out=args.out,
        opset=args.opset,
        precision=args.precision,
        optimize=not args.no_optimize,
        keep_plain=args.keep_plain,
        ids_dtype=args.ids_dtype or "",
        target=args.target,
        max_batch=args.max_batch,
    )
    with progress(f"export {args.family}") as step:
        report = export(args.family, options, step)
    for name, graph in report.graphs.items():
        print(
            f"{name}: {graph.path} ({graph.size_bytes / 1e6:.1f} MB), "
            f"parity min cosine {graph.worst_cosine:.6f}, "
            f"max abs diff {graph.worst_abs_diff:.2e}, fusions {graph.fusions}"
        )
    print(f"report: {Path(args.out) / 'export_report.json'}")
    return 0


def cmd_repo_build(args: argparse.Namespace) -> int:
    from vlpserve.model_repository import RepositoryOptions, build_repository
    from vlpserve.model_repository.placement import Layout
    from vlpserve.model_repository.runtime.params import InputLimits

    names = build_repository(
        RepositoryOptions(
            export_dir=args.export_dir,
            out=args.out,
            runtime=args.runtime,
            device=args.device,
            gpus=args.gpus,
            tensorrt=args.tensorrt,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            encoder_instances=args.encoder_instances,
            encoder_threads=args.encoder_threads,
            preprocess_instances=args.preprocess_instances,
            layout=Layout.read(args.layout) if args.layout else None,
            preprocess=args.preprocess,
            max_labels=args.max_labels,
            max_queue_size=args.max_queue_size,
            queue_timeout_ms=args.queue_timeout_ms,
            limits=InputLimits(
                max_image_bytes=args.max_image_bytes,
                max_image_pixels=args.max_image_pixels,
                max_text_bytes=args.max_text_bytes,
                image_formats=args.image_formats,
                decode=args.decode,
            ),
        )
    )
    print(f"{args.out}: {', '.join(names)}")
    return 0


def cmd_repo_push(args: argparse.Namespace) -> int:
    from vlpserve.model_repository.storage import push

    written = push(args.repo, args.url, endpoint_url=args.endpoint_url)
    print(f"{args.url}: {written} objects")
    return 0


def labels_of(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` -> {k: v, k2: v2}."""
    found = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"expected labels as key=value,key2=value2: {text!r}")
        found[key.strip()] = value.strip()
    return found


def cmd_deploy(args: argparse.Namespace) -> int:
    from vlpserve.deploy import DeployOptions, Format, inspect, render, write
    from vlpserve.deploy.sizing import GIB, MIB

    options = DeployOptions(
        repo=args.repo,
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        replicas=args.replicas,
        max_replicas=args.max_replicas or max(args.replicas, 4 * args.replicas),
        gpus=args.gpus,
        cpu=args.cpu,
        memory_bytes=round(args.memory_gib * GIB) if args.memory_gib else None,
        shm_bytes=round(args.shm_mib * MIB) if args.shm_mib else None,
        grace_s=args.grace_seconds,
        startup_s=args.startup_seconds,
        target_pressure=args.target_pressure,
        aws_secret=args.aws_secret,
        service_account=args.service_account,
        tls_secret=args.tls_secret,
        mutual_tls=args.mutual_tls,
        api_key_secret=args.api_key_secret,
        insecure=args.insecure,
        grpc_from=labels_of(args.grpc_from),
        monitoring_namespace=args.monitoring_namespace,
        format=Format(args.format),
    )
    shape = inspect(
        args.sizing_from or args.repo, endpoint_url=args.endpoint_url, cpus=options.cpus
    )
    paths = write(render(options, shape), args.out)
    print(
        f"{len(shape.models)} models, {shape.python_instances} Python-backend instances: "
        f"/dev/shm {(options.shm_bytes or shape.shm_bytes) // MIB} MiB, memory "
        f"{(options.memory_bytes or shape.memory_bytes) / GIB:.2f} GiB per pod"
    )
    for path in paths:
        print(path)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from vlpserve.env import collect, render

    env = collect(triton=not args.no_triton)
    if args.json:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(env), indent=2))
    else:
        print(render(env))
    return 0


def cmd_repo_validate(args: argparse.Namespace) -> int:
    from vlpserve.model_repository import validate_repository

    report = validate_repository(args.repo)
    print(f"{args.repo}: {len(report.models)} models valid ({', '.join(report.families)})")
    return 0


def _gateway_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    """The front door is plaintext HTTP: beyond loopback it needs the API key."""
    from vlpserve.serve.security import is_loopback

    if not (is_loopback(host) or api_key or insecure):
        raise ConfigError(
            f"the OpenAI front door on {host} would answer anyone who reaches it: add "
            "--api-key-file (or $VLPSERVE_API_KEY), or keep it on 127.0.0.1; --insecure "
            "exposes it unauthenticated"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from vlpserve.serve import Security, TritonServer, api_key_from

    security = Security(
        host=args.host,
        http_host=args.http_host,
        metrics_host=args.metrics_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        api_key=api_key_from(args.api_key_file),
        http=not args.no_http,
        insecure=args.insecure,
    )
    front_door = None
    if args.openai_port:
        from vlpserve.gateway.app import GatewayOptions

        ca = str(security.tls_ca or security.tls_cert) if security.tls else None
        front_door = GatewayOptions(  # checked now; the server's address is set once it runs
            triton="",
            api_key=api_key_from(args.openai_key_file, {}),
            triton_api_key=security.api_key,
            tls_ca=ca,
            tls_cert=str(security.tls_cert) if security.tls else None,
            tls_key=str(security.tls_key) if security.tls else None,
        )
        _gateway_exposure(args.openai_host, front_door.api_key, args.insecure)
        if security.api_key and not front_door.api_key:
            raise ConfigError(
                "the server takes an API key, and the front door would answer without one: "
                "give its callers a key of their own with --openai-key-file"
            )
    layout = None
    if args.layout:
        from vlpserve.model_repository.placement import Layout

        layout = Layout.read(args.layout)
    server = TritonServer(
        args.repo,
        layout=layout,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        security=security,
        grace_s=args.grace_seconds,
        tritonserver=args.tritonserver,
        startup_timeout_s=args.startup_timeout,
        log_echo=sys.stdout.buffer if args.log_stdout else None,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    gateway = None
    try:
        if front_door is not None:
            import dataclasses

            from vlpserve.gateway.server import GatewayThread

            options = dataclasses.replace(front_door, triton=server.grpc_url)
            gateway = GatewayThread(options, args.openai_host, args.openai_port).start()
        print(f"gRPC     {args.host}:{server.grpc_port}{' (TLS)' if security.tls else ''}")
        http = f"{args.http_host}:{server.http_port} (plaintext)" if security.http else "off"
        print(f"HTTP     {http}")
        print(f"metrics  {args.metrics_host}:{server.metrics_port} (plaintext, no key)")
        print(f"OpenAI   {gateway.url if gateway else 'off'}")
        print(f"API key  {'required' if security.api_key else 'none'}")
        for model, placed in server.placed.items():
            print(f"layout   {model}: {placed}")
        print("serving; Ctrl-C or SIGTERM stops", flush=True)
        while not stop.wait(0.5):
            if not server.healthy():
                print(server.log_tail(), file=sys.stderr)
                print(f"vlpserve: error: {server.failure()}", file=sys.stderr)
                return 1
    finally:
        if gateway is not None:
            gateway.stop()
        code = server.stop()
    print(f"stopped (tritonserver exit code {code})", flush=True)
    return 0 if code == 0 else 1


# What KServe's Triton runtime (kserve-tritonserver) puts before an InferenceService's own
# args, and the serve option each becomes.
KSERVE_RUNTIME_OPTIONS = {
    "--model-store": None,  # the repository folder: serve's positional argument
    "--grpc-port": "--grpc-port",
    "--http-port": "--http-port",
    "--allow-grpc": "",  # gRPC is always served
    "--allow-http": "",  # serve keeps HTTP, on loopback unless --http-host
}


def serve_argv_of_kserve(runtime_args: Sequence[str]) -> list[str]:
    """``vlpserve serve`` arguments for what KServe runs: its runtime's ``tritonserver
    --model-store=... --grpc-port=... ...`` followed by the InferenceService's args."""
    rest = list(runtime_args)
    if rest[:1] == ["tritonserver"]:
        rest = rest[1:]
    repo, options, own = None, [], []
    for arg in rest:
        name, sep, value = arg.partition("=")
        if sep and name in KSERVE_RUNTIME_OPTIONS:
            target = KSERVE_RUNTIME_OPTIONS[name]
            if target is None:
                repo = value
            elif target:
                options += [target, value]
            continue
        own.append(arg)
    if repo is None:
        raise ConfigError("expected KServe's tritonserver arguments with --model-store=FOLDER")
    return ["serve", repo, *options, *own]


def cmd_kserve(args: argparse.Namespace) -> int:
    serve_args = parser().parse_args(serve_argv_of_kserve(args.runtime_args))
    return cmd_serve(serve_args)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server's HTTP health endpoint says ready (``--live``: live): the
    Kubernetes exec probe, against the pod's loopback."""
    import urllib.error
    import urllib.request

    what = "live" if args.live else "ready"
    url = f"http://{args.host}:{args.http_port}/v2/health/{what}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"vlpserve: not {what}: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"vlpserve: not {what}: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


def cmd_openai(args: argparse.Namespace) -> int:
    from vlpserve.gateway.app import GatewayOptions
    from vlpserve.gateway.server import run
    from vlpserve.serve import api_key_from

    options = GatewayOptions(
        triton=args.triton,
        api_key=api_key_from(args.api_key_file, {}),
        triton_api_key=api_key_from(args.triton_key_file),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    _gateway_exposure(args.host, options.api_key, args.insecure)
    scheme = "https" if options.tls_cert else "http"
    print(
        f"OpenAI front door on {scheme}://{args.host}:{args.port}/v1 over {args.triton}", flush=True
    )
    run(options, args.host, args.port)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from vlpserve.benchmarks import BenchOptions, run_bench
    from vlpserve.benchmarks.pinning import cpu_list
    from vlpserve.progress import progress

    options = BenchOptions(
        scenarios=tuple(args.scenarios.split(",")),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        rate_rps=args.rate,
        warmup_s=args.warmup,
        duration_s=args.duration,
        max_total_s=args.max_total,
        url=args.url,
        metrics_url=args.metrics_url,
        workdir=Path(args.workdir),
        out=Path(args.out),
        size=args.size,
        device=args.device,
        baselines=not args.no_baselines,
        precision=args.precision,
        encoder_instances=args.encoder_instances,
        encoder_threads=args.encoder_threads,
        layout=args.layout,
        preprocess=args.preprocess,
        decode=args.decode,
        max_queue_delay_us=args.max_queue_delay_us,
        command="vlpserve " + " ".join(sys.argv[1:]),
        soak_s=args.soak,
        soak_window_s=args.soak_window,
        server_pid=args.server_pid,
        openai_url=args.openai_url,
        server_cpus=cpu_list(args.server_cpus) if args.server_cpus else (),
    )
    with progress("bench") as step:
        report = run_bench(options, step)
    print(Path(report["files"]["markdown"]).read_text())
    print(f"report: {report['files']['json']}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from vlpserve.benchmarks.pinning import cpu_list
    from vlpserve.benchmarks.tune import TuneOptions, planned_points, run_tune
    from vlpserve.progress import progress

    options = TuneOptions(
        repo=args.repo,
        out=args.out,
        scenarios=tuple(s for s in (args.scenarios or "").split(",") if s),
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        latency_p99_ms=args.latency_p99_ms,
        budget_s=args.budget,
        warmup_s=args.warmup,
        duration_s=args.duration,
        cpus=frozenset(cpu_list(args.server_cpus)) if args.server_cpus else None,
    )
    with progress("tune", total=planned_points(options)) as step:
        report = run_tune(options, step)
    print(Path(report["files"]["markdown"]).read_text())
    print(f"layout: {report['files']['layout']} (serve --layout, repo build --layout)")
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from vlpserve.benchmarks.gpu_check import hardware, options, run_gpu_check
    from vlpserve.progress import progress

    found = hardware()
    bench = options(
        Path(args.out),
        size=args.size,
        workdir=Path(args.workdir) if args.workdir else None,
        warmup_s=args.warmup,
        duration_s=args.duration,
        budget_s=args.budget,
        command="vlpserve " + " ".join(sys.argv[1:]),
        found=found,
    )
    with progress("gpu-check") as step:
        done = run_gpu_check(bench, step, found)
    print(Path(done["files"]["markdown"]).read_text())
    print(f"report: {done['files']['json']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vlpserve.demo import run_demo

    models = {
        name: value
        for name, value in (
            ("clip", args.model),
            ("groupvit", args.groupvit),
            ("siglip", args.siglip),
            ("blip-caption", args.blip_caption),
            ("blip-vqa", args.blip_vqa),
        )
        if value
    }
    run_demo(Path(args.workdir), models=models)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vlpserve", description=__doc__)
    root.add_argument("--version", action="version", version=f"vlpserve {__version__}")
    root.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = root.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export a checkpoint to ONNX graphs")
    export.add_argument("family", choices=[f.value for f in EXPORTABLE])
    export.add_argument("--model", required=True, help="hub id or local checkpoint folder")
    export.add_argument("--out", required=True, type=Path)
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    export.add_argument("--keep-plain", action="store_true", help="keep the unfused graph too")
    export.add_argument("--no-optimize", action="store_true", help="skip ORT fusions")
    export.add_argument(
        "--ids-dtype",
        choices=["int64", "int32"],
        default=None,
        help="token id inputs of the text graphs (default int64; int32 for --target tensorrt)",
    )
    export.add_argument(
        "--target",
        choices=["onnxruntime", "tensorrt"],
        default="onnxruntime",
        help="tensorrt: standard operators only, fp16 overflow spots in fp32, a profile",
    )
    export.add_argument("--max-batch", type=int, default=64, help="the TensorRT profile's")
    export.set_defaults(func=cmd_export)

    repo = sub.add_parser("repo", help="build or validate a Triton model repository")
    repo_sub = repo.add_subparsers(dest="repo_command", required=True)
    build = repo_sub.add_parser("build", help="build a repository from an export folder")
    build.add_argument("export_dir", type=Path)
    build.add_argument("--out", required=True, type=Path)
    build.add_argument("--runtime", choices=["python", "onnxruntime"], default="python")
    build.add_argument("--device", choices=["cpu", "gpu"], default=None)
    build.add_argument(
        "--gpus",
        type=gpu_ids,
        default=(),
        help="GPU ids (0,1,...): the encoders' instances on each (implies --device gpu)",
    )
    build.add_argument(
        "--tensorrt",
        action="store_true",
        help="python runtime on GPU: encoders on ONNX Runtime's TensorRT provider (fp16, "
        "engines cached in the repository)",
    )
    build.add_argument("--max-batch-size", type=int, default=64)
    build.add_argument(
        "--max-queue-delay-us", type=int, default=None, help="the batcher's wait (default 0)"
    )
    build.add_argument(
        "--encoder-instances",
        type=int,
        default=None,
        help="instances of each model that runs a graph (default: auto, chosen by serve for "
        "the CPUs the server may use)",
    )
    build.add_argument(
        "--encoder-threads",
        type=int,
        default=None,
        help="ONNX Runtime threads per graph instance (0: one per core; default: auto)",
    )
    build.add_argument(
        "--preprocess-instances",
        type=int,
        default=None,
        help="tokenizer and image-decoding instances (default: auto)",
    )
    build.add_argument(
        "--layout",
        type=Path,
        default=None,
        help="a layout file (vlpserve tune writes one): instances, threads, batching, written "
        "as built; the options above still win",
    )
    build.add_argument(
        "--preprocess",
        choices=["host", "device"],
        default="host",
        help="where images are resized, cropped and normalised after decoding on CPU "
        "threads: host (bit-equal to Hugging Face) or device (ONNX Runtime on the "
        "instance's device, GPU with --device gpu; parity-gated, README; CLIP and BLIP)",
    )
    build.add_argument("--max-labels", type=int, default=64, help="GroupViT labels per request")
    build.add_argument(
        "--max-queue-size",
        type=int,
        default=0,
        help="requests waiting per model before new ones are refused (default 0: no bound; "
        "a bound lets some requests stall 500 ms in tritonserver 2.51, README Limits)",
    )
    build.add_argument(
        "--queue-timeout-ms",
        type=int,
        default=0,
        help="drop requests waiting longer (default 0: only the caller's own deadline, which "
        "cancels its call); also a queue policy, with the bound's 500 ms stalls",
    )
    build.add_argument("--max-image-bytes", type=int, default=20 * 2**20, help="per image")
    build.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="per image, from its header"
    )
    build.add_argument("--max-text-bytes", type=int, default=65_536, help="per text (UTF-8)")
    build.add_argument(
        "--image-formats",
        default=IMAGE_FORMATS,
        help="the image formats accepted (PIL's names, comma-separated; HEIF is HEIC); "
        "others are refused",
    )
    build.add_argument(
        "--decode",
        choices=DECODE,
        default="exact",
        help="exact: JPEGs decoded in full, bit-equal to Hugging Face; fast: at a reduced DCT "
        "scale that leaves twice the model's input (several times faster on camera photos; "
        "parity-gated, README; CLIP, SigLIP and BLIP)",
    )
    build.set_defaults(func=cmd_repo_build)
    push = repo_sub.add_parser("push", help="upload a repository to object storage (S3)")
    push.add_argument("repo", type=Path)
    push.add_argument("url", help="s3://bucket/prefix")
    push.add_argument("--endpoint-url", default=None, help="an S3-compatible store's URL")
    push.set_defaults(func=cmd_repo_push)
    validate = repo_sub.add_parser("validate", help="check configs against graphs and contract")
    validate.add_argument("repo", type=Path)
    validate.set_defaults(func=cmd_repo_validate)

    serve = sub.add_parser("serve", help="run tritonserver on a repository")
    serve.add_argument(
        "repo", help="a repository folder, or s3://host:port/bucket/prefix (AWS_* variables)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="gRPC's listening address (0.0.0.0: every interface)"
    )
    serve.add_argument(
        "--http-host", default="127.0.0.1", help="HTTP's address (plaintext: loopback unless set)"
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="metrics' address (plaintext, no key: loopback unless set)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow endpoints beyond loopback with neither an API key nor client certificates",
    )
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--no-http", action="store_true", help="no HTTP endpoint")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM: gRPC over TLS")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM: its private key")
    serve.add_argument(
        "--tls-ca", type=Path, default=None, help="PEM: require client certificates it signed"
    )
    serve.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="callers must present this key (default: $VLPSERVE_API_KEY, if set)",
    )
    serve.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, in-flight requests get this long to finish",
    )
    serve.add_argument("--tritonserver", type=Path, default=None, help="another tritonserver")
    serve.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds to load every model"
    )
    serve.add_argument(
        "--log-stdout",
        action="store_true",
        help="also write tritonserver's log to stdout (containers: kubectl logs); its file "
        "rotates at 8 MiB either way",
    )
    serve.add_argument(
        "--openai-port", type=int, default=None, help="also serve the OpenAI front door there"
    )
    serve.add_argument("--openai-host", default="127.0.0.1", help="the front door's address")
    serve.add_argument(
        "--openai-key-file",
        type=Path,
        default=None,
        help="the front door's callers must present this key (not the server's own)",
    )
    serve.add_argument(
        "--layout",
        type=Path,
        default=None,
        help="a layout file (vlpserve tune writes one) applied to every model at start, "
        "instead of the auto layout sized from the CPUs the server may use",
    )
    serve.set_defaults(func=cmd_serve)

    kserve = sub.add_parser(
        "kserve",
        help="the InferenceService's command: KServe's tritonserver arguments, then serve's",
    )
    kserve.add_argument("runtime_args", nargs=argparse.REMAINDER)
    kserve.set_defaults(func=cmd_kserve)

    health = sub.add_parser("health", help="exit 0 when a server on this machine is ready")
    health.add_argument("--host", default="127.0.0.1", help="where its HTTP endpoint listens")
    health.add_argument("--http-port", type=int, default=8000)
    health.add_argument("--live", action="store_true", help="live, not ready")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds")
    health.set_defaults(func=cmd_health)

    env = sub.add_parser("env", help="versions, CUDA, which execution providers work and why")
    env.add_argument("--json", action="store_true")
    env.add_argument("--no-triton", action="store_true", help="do not start a tritonserver")
    env.set_defaults(func=cmd_env)

    deploy = sub.add_parser("deploy", help="manifests for a cluster")
    deploy_sub = deploy.add_subparsers(dest="target", required=True)
    k8s = deploy_sub.add_parser("kubernetes", help="Kubernetes objects, or a KServe service")
    k8s.add_argument("--repo", required=True, help="s3://host:port/bucket/prefix, gs://, as://")
    k8s.add_argument("--out", type=Path, required=True, help="folder for the YAML files")
    k8s.add_argument("--format", choices=["kubernetes", "kserve"], default="kubernetes")
    k8s.add_argument("--name", default="vlpserve")
    k8s.add_argument("--namespace", default="default")
    k8s.add_argument("--image", default="vlpserve:latest", help="built from deploy/Dockerfile")
    k8s.add_argument("--replicas", type=int, default=2, help="and the autoscaler's minimum")
    k8s.add_argument("--max-replicas", type=int, default=None, help="default: 4x --replicas")
    k8s.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu per pod")
    k8s.add_argument("--cpu", default="4", help="CPU request per pod")
    k8s.add_argument("--memory-gib", type=float, default=None, help="default: from the repo")
    k8s.add_argument("--shm-mib", type=float, default=None, help="default: from the repo")
    k8s.add_argument("--grace-seconds", type=int, default=30, help="the server's drain time")
    k8s.add_argument("--startup-seconds", type=int, default=None, help="default: from the repo")
    k8s.add_argument(
        "--target-pressure", type=float, default=0.5, help="queue/compute time per pod"
    )
    k8s.add_argument("--aws-secret", default=None, help="a Secret of AWS_* variables")
    k8s.add_argument("--service-account", default=None, help="the pods' service account")
    k8s.add_argument("--tls-secret", default=None, help="a kubernetes.io/tls Secret")
    k8s.add_argument("--mutual-tls", action="store_true", help="clients need certificates")
    k8s.add_argument("--api-key-secret", default=None, help="a Secret with key 'api-key'")
    k8s.add_argument(
        "--insecure",
        action="store_true",
        help="pods answer gRPC with neither an API key nor client certificates",
    )
    k8s.add_argument(
        "--grpc-from",
        default=None,
        help="NetworkPolicy: gRPC only from pods with these labels (k=v,k2=v2; default: "
        "any pod of the namespace)",
    )
    k8s.add_argument(
        "--monitoring-namespace",
        default="monitoring",
        help="NetworkPolicy: metrics only from this namespace (Prometheus')",
    )
    k8s.add_argument(
        "--sizing-from", default=None, help="size from this folder instead of reading --repo"
    )
    k8s.add_argument("--endpoint-url", default=None, help="the store's URL, to read it here")
    k8s.set_defaults(func=cmd_deploy)

    openai = sub.add_parser("openai", help="an OpenAI-compatible HTTP front door over a server")
    openai.add_argument("--triton", required=True, help="the server's gRPC host:port")
    openai.add_argument("--host", default="127.0.0.1")
    openai.add_argument("--port", type=int, default=8080)
    openai.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="callers must present this key (the front door's own, not the server's)",
    )
    openai.add_argument(
        "--triton-key-file",
        type=Path,
        default=None,
        help="the key sent to the server (default: $VLPSERVE_API_KEY, if set)",
    )
    openai.add_argument("--tls-cert", default=None, help="PEM: serve HTTPS with it")
    openai.add_argument("--tls-key", default=None, help="PEM: its private key")
    openai.add_argument("--tls-ca", default=None, help="PEM: the server's gRPC is TLS")
    openai.add_argument(
        "--insecure", action="store_true", help="allow --host beyond loopback with no API key"
    )
    openai.set_defaults(func=cmd_openai)

    check = sub.add_parser(
        "gpu-check",
        help="the prepared GPU measurement: CLIP B/32 and BLIP base served vs in process",
    )
    check.add_argument("--out", required=True, help="folder for the reports")
    check.add_argument("--size", choices=["tiny", "base"], default="base", help="tiny: a smoke")
    check.add_argument("--workdir", default=None, help="exports and repository (default: OUT/work)")
    check.add_argument("--warmup", type=float, default=2.0, help="seconds per point")
    check.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    check.add_argument(
        "--budget",
        type=float,
        default=360.0,
        help="no load point starts later than this many seconds after the start",
    )
    check.set_defaults(func=cmd_gpu_check)

    bench = sub.add_parser("bench", help="throughput and latency of the served tasks")
    bench.add_argument(
        "--scenarios",
        default="clip_text,clip_image",
        help="comma-separated scenario names (README, Benchmarks); an unknown one lists them",
    )
    bench.add_argument("--concurrency", default="1,2,4,8,16,32,64")
    bench.add_argument("--rate", type=float, default=None, help="open loop: requests/s")
    bench.add_argument("--warmup", type=float, default=2.0, help="seconds per point")
    bench.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    bench.add_argument("--max-total", type=float, default=3600.0, help="seconds in all")
    bench.add_argument(
        "--url", default=None, help="a running server's gRPC host:port (a,b,c: replicas)"
    )
    bench.add_argument("--metrics-url", default=None, help="its metrics endpoint")
    bench.add_argument("--size", choices=["tiny", "base"], default="base")
    bench.add_argument(
        "--device", choices=["cpu", "gpu"], default=None, help="default: gpu if CUDA"
    )
    bench.add_argument("--workdir", default="build/bench")
    bench.add_argument("--out", default="build/bench/report")
    bench.add_argument("--no-baselines", action="store_true")
    bench.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp32",
        help="of the graphs it exports and serves (int8: the CPU variant)",
    )
    bench.add_argument("--encoder-instances", type=int, default=None, help="as repo build's")
    bench.add_argument("--encoder-threads", type=int, default=None, help="as repo build's")
    bench.add_argument("--layout", type=Path, default=None, help="as repo build's")
    bench.add_argument(
        "--preprocess", choices=["host", "device"], default="host", help="as repo build's"
    )
    bench.add_argument("--decode", choices=DECODE, default="exact", help="as repo build's")
    bench.add_argument("--max-queue-delay-us", type=int, default=None, help="as repo build's")
    bench.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="SECONDS",
        help="every scenario at once for this long, at the first --concurrency value",
    )
    bench.add_argument("--soak-window", type=float, default=60.0, help="seconds per window")
    bench.add_argument(
        "--openai-url", default=None, help="with --url: the front door's base URL (.../v1)"
    )
    bench.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --url: the tritonserver's pid on this machine, whose memory --soak samples",
    )
    bench.add_argument(
        "--server-cpus",
        default=None,
        metavar="CPUS",
        help="the embedded server's CPUs (1 / 0,1 / 0-3): the load generator runs on the "
        "others, the in-process baselines on these (Linux)",
    )
    bench.set_defaults(func=cmd_bench)

    tune = sub.add_parser(
        "tune", help="find the layout of a repository for this machine and a p99 target"
    )
    tune.add_argument("repo", type=Path)
    tune.add_argument("--out", type=Path, required=True, help="the layout file (JSON) to write")
    tune.add_argument(
        "--scenarios",
        default=None,
        help="bench scenarios to load it with (default: the text and image ones it serves)",
    )
    tune.add_argument("--concurrency", default="1,4,16")
    tune.add_argument(
        "--latency-p99-ms",
        type=float,
        default=None,
        help="the p99 to meet (default: 3x each scenario's batch-1 p50)",
    )
    tune.add_argument("--budget", type=float, default=900.0, help="seconds for the search")
    tune.add_argument("--warmup", type=float, default=1.0, help="seconds per point")
    tune.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    tune.add_argument(
        "--server-cpus",
        default=None,
        metavar="CPUS",
        help="pin the server to these CPUs (1 / 0,1 / 0-3) and size its layouts for them",
    )
    tune.set_defaults(func=cmd_tune)

    demo = sub.add_parser(
        "demo", help="export, build, serve and query CLIP, GroupViT, SigLIP, BLIP"
    )
    demo.add_argument("--workdir", default="build/demo")
    demo.add_argument("--model", default=None, help="CLIP hub id or folder (default: B/32)")
    demo.add_argument("--groupvit", default=None, help="GroupViT hub id or folder")
    demo.add_argument("--siglip", default=None, help="SigLIP or SigLIP 2 hub id or folder")
    demo.add_argument("--blip-caption", default=None, help="BLIP captioning hub id or folder")
    demo.add_argument("--blip-vqa", default=None, help="BLIP VQA hub id or folder")
    demo.set_defaults(func=cmd_demo)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except VlpserveError as exc:
        print(f"vlpserve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vlpserve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
