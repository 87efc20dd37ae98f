"""Fuzz the HTTP API from its own OpenAPI schema (Schemathesis): every answer a 2xx, or a
4xx with OpenAI's error body, never a 5xx; responses as the schema declares them; the
service healthy after.

Each operation of ``/openapi.json`` gets Schemathesis's generated requests, valid ones and
(``--negative``, on by default) ones that break the schema; a share of the valid uploads
carry a real spoken WAV instead of random bytes, so transcriptions reach the recognizer
with fuzzed options. Each answer goes through Schemathesis's response checks (server
error, status code, content type, headers and body against the schema) and this API's
own rule: a 4xx body is ``{"error": {"message", "type", "param", "code"}}``.

    python -m scripts.openapi_fuzz --url http://127.0.0.1:8000 --max-examples 300
    python -m scripts.openapi_fuzz --max-examples 100     # in-process, no Ray

In-process (no ``--url``): the FastAPI app of one ingress replica around the plain
FSMN-VAD and Whisper tiny.en classes, as the suite's fast path serves it, with local
stand-ins for what Serve provides (the replica context, ``serve.status``, the stats
board). Prints operations x status classes and every finding (a curl command to replay
it); exit 1 if any. The suite runs a bounded version (tests/serve/test_openapi_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MODEL = "whisper-tiny.en"
APP_NAME = "openapi-fuzz"
AUDIO_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")
# Schemathesis's checks of each answer against the schema (its own names).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
ERROR_FIELDS = {"message", "type", "param", "code"}


# -- the in-process app ---------------------------------------------------------------


class _LocalHandle:
    """A deployment handle whose methods are local async functions (``.remote()``)."""

    def __init__(self, **methods: Callable[..., Any]) -> None:
        self._methods = methods

    def __getattr__(self, name: str) -> SimpleNamespace:
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(name)
        fn = self._methods[name]
        return SimpleNamespace(remote=lambda *args: asyncio.ensure_future(fn(*args)))


@contextlib.contextmanager
def in_process_app(models_dir: Path | None = None) -> Iterator[Any]:
    """The ingress's FastAPI app on the real models, no Ray; Serve's parts stood in."""
    from ray import serve

    from serve_app.config import (
        AudioSettings,
        RecognizerSettings,
        VadSettings,
        resolve_models_dir,
    )
    from serve_app.online import system
    from serve_app.online.ingress import INGRESS_DEPLOYMENT, IngressOptions, IngressServer
    from serve_app.recognizers.factory import build_recognizer
    from serve_app.tools.provision_models import provision
    from serve_app.vad.detectors import FsmnVad

    if models_dir is None:
        models_dir = resolve_models_dir(None)
        provision(models_dir)
    vad = FsmnVad(VadSettings(), models_dir=models_dir)
    recognizer = build_recognizer(
        RecognizerSettings(
            name=MODEL, backend="whisper", model=MODEL, precision="int8", language="en"
        ),
        models_dir,
    )
    totals = {"num_batches": 0, "items": 0, "audio_s": 0.0, "padded_s": 0.0, "busy_s": 0.0}

    async def segments(samples):
        return await asyncio.to_thread(vad.segments, samples)

    async def transcribe(job):
        started = time.perf_counter()
        (result,) = await asyncio.to_thread(recognizer.transcribe_batch, [job])
        totals["num_batches"] += 1
        totals["items"] += 1
        totals["busy_s"] += time.perf_counter() - started
        if isinstance(result, Exception):
            raise result
        return result

    async def capabilities() -> dict:
        return recognizer.capabilities().to_json()

    async def batch_stats() -> dict:
        return {**totals, "batch_size_counts": {1: totals["num_batches"]}}

    # The stats board (a plain StatsBoard; the app's Ray actor wraps the same class) with
    # one recognizer replica that applies a tuning as soon as it is set.
    board = system.StatsBoard()
    in_force = {"max_batch_audio_s": 60.0, "batch_wait_timeout_s": 0.01}

    def publish(version: int) -> None:
        stats = {**totals, **in_force, "applied_version": version, "errors": {}}
        board.publish(MODEL, "local", stats)

    async def set_tuning(model: str, settings: dict) -> int:
        version = board.set_tuning(model, settings)
        in_force.update(settings)
        publish(version)
        return version

    async def snapshot(window_s: float = 120.0) -> dict:
        publish(board.tuning(MODEL)["version"])
        return board.snapshot(window_s)

    running = SimpleNamespace(status="HEALTHY", replica_states={"RUNNING": 1})
    deployments = {name: running for name in (INGRESS_DEPLOYMENT, "Vad", f"Recognizer-{MODEL}")}
    status = SimpleNamespace(applications={APP_NAME: SimpleNamespace(deployments=deployments)})
    options = IngressOptions(
        limits=AudioSettings(),
        model_names={MODEL: MODEL, "whisper-1": MODEL},
        default_model=MODEL,
        default_options={},
    )
    with (
        mock.patch.dict(os.environ),
        mock.patch.object(serve, "get_replica_context", lambda: SimpleNamespace(app_name=APP_NAME)),
        mock.patch.object(serve, "status", lambda: status),
        mock.patch.object(
            system, "get_board", lambda _: _LocalHandle(set_tuning=set_tuning, snapshot=snapshot)
        ),
    ):
        for name in [n for n in os.environ if n.startswith("ASR_") and "KEYS" in n]:
            del os.environ[name]  # no API keys: the schema's security is optional
        recognizers = {
            MODEL: _LocalHandle(
                transcribe=transcribe, capabilities=capabilities, batch_stats=batch_stats
            )
        }
        server = IngressServer(_LocalHandle(segments=segments), recognizers, options)
        yield server.http_app()


def speech_wav(tmp_dir: Path) -> bytes | None:
    """A short spoken sentence as WAV bytes (espeak-ng); None where it is missing."""
    from scripts.common.audio import wav_bytes
    from serve_app.tools.speech import SENTENCES, have_espeak, synthesize

    return wav_bytes(synthesize(SENTENCES[0], tmp_dir)) if have_espeak() else None


# -- the run --------------------------------------------------------------------------


@dataclass
class Finding:
    operation: str
    status: int | None
    problems: list[str]
    request: str  # a curl command that replays it


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)  # (operation, "2xx"/"4xx"/...) -> n
    findings: list[Finding] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)  # (operation, status, error code) -> n
    cases: int = 0
    server_errors: int = 0
    seconds: float = 0.0

    def table(self) -> str:
        classes = sorted({c for _, c in self.counts})
        operations = sorted({op for op, _ in self.counts})
        width = max([len(op) for op in operations] + [9])
        lines = [f"{'operation':<{width}} " + " ".join(f"{c:>5}" for c in classes)]
        for op in operations:
            row = " ".join(f"{self.counts[(op, c)]:>5}" for c in classes)
            lines.append(f"{op:<{width}} {row}")
        for op in operations:
            codes = [(st, c, n) for (o, st, c), n in sorted(self.codes.items()) if o == op]
            if codes:
                lines.append(f"  {op}: " + ", ".join(f"{st} {c} x{n}" for st, c, n in codes))
        lines.append(
            f"{self.cases} cases in {self.seconds:.1f} s: {self.server_errors} server errors, "
            f"{len(self.findings)} findings"
        )
        return "\n".join(lines)


def load_schema(*, url: str | None = None, app: Any = None):
    import schemathesis

    if url is not None:
        return schemathesis.openapi.from_url(url.rstrip("/") + "/openapi.json")
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def openai_error_body(response) -> list[str]:
    """This API's rule for a 4xx: OpenAI's error body, every field present."""
    if not 400 <= response.status_code < 500:
        return []
    try:
        error = response.json().get("error")
    except Exception:
        return [f"{response.status_code}: the body is not JSON: {response.text[:200]!r}"]
    if not isinstance(error, dict) or not ERROR_FIELDS <= set(error):
        return [f"{response.status_code}: not OpenAI's error body: {response.text[:200]!r}"]
    return []


def fuzz(
    schema,
    *,
    max_examples: int,
    negative: bool = True,
    speech: bytes | None = None,
    seed: int | None = None,
    base_url: str | None = None,
    skip: Callable[[str, Any], str | None] = lambda operation, case: None,
) -> Report:
    """Run every operation of ``schema``; ``skip(operation, case)`` may name a known
    finding to leave out of the run (counted as "skip")."""
    import hypothesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import load_all_checks
    from schemathesis.core.failures import FailureGroup

    load_all_checks()
    import schemathesis.checks as generic_checks
    from schemathesis.specs.openapi import checks as openapi_checks

    checks = [
        getattr(openapi_checks, name, None) or getattr(generic_checks, name) for name in CHECKS
    ]
    report = Report()
    started = time.perf_counter()
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if negative else [])

    def one(label: str, case) -> None:
        reason = skip(label, case)
        if reason is not None:
            report.counts[(label, "skip")] += 1
            return
        report.cases += 1
        response = case.call(base_url=base_url) if base_url else case.call()
        status = response.status_code
        report.counts[(label, f"{status // 100}xx")] += 1
        problems = openai_error_body(response)
        if 400 <= status < 500:
            with contextlib.suppress(Exception):
                report.codes[(label, status, response.json()["error"]["code"])] += 1
        content_type = {k.lower(): v for k, v in response.headers.items()}.get("content-type")
        streamed = "text/event-stream" in str(content_type)
        if streamed and '"server_error"' in response.text:
            problems.append(f"a server error inside the event stream: {response.text[-300:]!r}")
        if status >= 500 or (streamed and '"server_error"' in response.text):
            report.server_errors += 1
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, FailureGroup) as exc:  # every check that failed
            problems.append(_describe(exc))
        if problems:
            request = case.as_curl_command()
            report.findings.append(Finding(label, status, problems, request))

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode)
            if speech is not None and mode is GenerationMode.POSITIVE:
                if operation.path in AUDIO_PATHS:
                    strategy = st.tuples(strategy, st.integers(0, 2)).map(
                        lambda pair: _with_file(pair[0], speech if pair[1] == 0 else None)
                    )
            settings = hypothesis.settings(
                max_examples=max_examples,
                derandomize=seed is None,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                verbosity=hypothesis.Verbosity.quiet,
            )

            run = settings(hypothesis.given(case=strategy)(_bound(one, label)))
            if seed is not None:
                run = hypothesis.seed(seed)(run)
            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing of this mode to generate (no parameters to break)
    report.seconds = time.perf_counter() - started
    return report


def _bound(one: Callable[[str, Any], None], label: str) -> Callable[[Any], None]:
    def run(case) -> None:
        one(label, case)

    return run


def _with_file(case, data: bytes | None):
    if data is not None and isinstance(case.body, dict):
        case.body = {**case.body, "file": data}
    return case


def _describe(exc: BaseException) -> str:
    failures = getattr(exc, "exceptions", None) or [exc]
    parts = []
    for failure in failures:
        title = getattr(failure, "title", type(failure).__name__)
        message = getattr(failure, "message", str(failure))
        parts.append(f"{title}: {' '.join(str(message).split())[:300]}")
    return "; ".join(parts)


def healthz(*, url: str | None = None, app: Any = None) -> int:
    if url is not None:
        import httpx

        return httpx.get(url.rstrip("/") + "/healthz", timeout=30).status_code
    from starlette.testclient import TestClient

    return TestClient(app).get("/healthz").status_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running service (default: the app in-process)")
    parser.add_argument("--max-examples", type=int, default=200, help="per operation and mode")
    parser.add_argument("--no-negative", action="store_true", help="valid requests only")
    parser.add_argument("--seed", type=int, help="default: derandomized (the same cases)")
    args = parser.parse_args(argv)

    import tempfile

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        app = None if args.url else stack.enter_context(in_process_app())
        schema = load_schema(url=args.url, app=app)
        report = fuzz(
            schema,
            max_examples=args.max_examples,
            negative=not args.no_negative,
            speech=speech_wav(Path(tmp)),
            seed=args.seed,
            base_url=args.url,
        )
        health = healthz(url=args.url, app=app)
    print(report.table())
    groups: dict[tuple, list[Finding]] = {}
    for finding in report.findings:  # one example of each kind
        kind = (finding.operation, finding.status, finding.problems[0].split(":")[0])
        groups.setdefault(kind, []).append(finding)
    for (operation, status, _), found in groups.items():
        print(f"\n{operation} -> {status} ({len(found)} cases), e.g.:")
        for problem in found[0].problems:
            print(f"  {problem}")
        print(f"  {found[0].request[:2000]}")
    print(f"/healthz after: {health}")
    return 0 if not report.findings and health == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
