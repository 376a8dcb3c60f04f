"""Load test of a shared host: N concurrent API clients on 127.0.0.1, each submitting a small
prediction of its own specimens and polling its status, then checking that the results it got
back are its own. Prints latencies and counts; bounded in clients, polls and time.

    .venv/bin/python bench/load_test.py              # 20 clients, synthetic:256 at 256 px
    .venv/bin/python bench/load_test.py --clients 5 --model random:tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _client_run(url: str, folder: Path, index: int, deadline: float, results: list) -> None:
    from gradio_client import Client, handle_file

    from sam2pal.synthetic.domains import write_collection

    files = write_collection(folder / f"client{index}", "in-domain", 500 + index, templates=1, specimens=1)
    specimen = next(files.specimens.iterdir())
    own = specimen.with_name(f"client{index:02d}_{specimen.name}")
    specimen.rename(own)
    record = {"client": index, "polls": [], "ok": False, "mixed_up": False, "error": None}
    try:
        client = Client(url, verbose=False)
        began = time.perf_counter()
        job = client.predict("predict", handle_file(str(files.templates)),
                             [handle_file(str(files.folder / "template_0.png"))], [handle_file(str(own))],
                             "{}", None, api_name="/submit_job")
        record["submit_s"] = time.perf_counter() - began
        while time.monotonic() < deadline:
            asked = time.perf_counter()
            status = json.loads(client.predict(job, api_name="/job_status"))
            record["polls"].append(time.perf_counter() - asked)
            if status["state"] in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        record["state"] = status["state"]
        if status["state"] == "done":
            predictions = json.loads(Path(client.predict(job, "predictions", api_name="/job_file")).read_text())
            names = [image["file_name"] for image in predictions["images"]]
            record["mixed_up"] = names != [own.name]
            record["ok"] = not record["mixed_up"]
        record["total_s"] = time.perf_counter() - began
    except Exception as exc:  # a load test reports every failure instead of stopping at the first
        record["error"] = f"{type(exc).__name__}: {exc}"
    results.append(record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--model", default="synthetic:256")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=600, help="seconds before the test gives up")
    args = parser.parse_args(argv)

    from backends.local import LocalBackend
    from sam2pal.ui.app import AppConfig, build_app, launch_options
    from sam2pal.ui.workspace import Workspaces

    with tempfile.TemporaryDirectory(prefix="sam2pal-load-") as tmp:
        folder = Path(tmp)
        backend = LocalBackend()
        workspaces = Workspaces(folder / "sessions")
        config = AppConfig(model=args.model, image_size=args.image_size, device="cpu")
        app = build_app(config, backend, workspaces)
        app.queue(default_concurrency_limit=4).launch(server_name="127.0.0.1", server_port=None,
                                                      prevent_thread_lock=True, quiet=True,
                                                      **launch_options(config, workspaces))
        results: list[dict] = []
        deadline = time.monotonic() + args.timeout
        began = time.perf_counter()
        try:
            threads = [threading.Thread(target=_client_run, args=(app.local_url, folder, i, deadline, results))
                       for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            app.close()
            backend.close()
        wall = time.perf_counter() - began
    polls = [p for r in results for p in r["polls"]]
    ok = sum(r["ok"] for r in results)
    print(f"clients: {args.clients}, answered: {len(results)}, results correct and their own: {ok}, "
          f"mixed up: {sum(r['mixed_up'] for r in results)}, errors: {sum(r['error'] is not None for r in results)}")
    if polls:
        ordered = sorted(polls)
        print(f"status polls: {len(polls)}, median {statistics.median(polls) * 1000:.0f} ms, "
              f"95th percentile {ordered[int(0.95 * (len(ordered) - 1))] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")
    totals = [r["total_s"] for r in results if "total_s" in r]
    if totals:
        print(f"submit to result per client: median {statistics.median(totals):.1f} s, max {max(totals):.1f} s; "
              f"wall {wall:.1f} s for all ({args.model}, {args.image_size} px, one local worker)")
    for record in results:
        if record["error"]:
            print(f"client {record['client']}: {record['error']}")
    return 0 if ok == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())
