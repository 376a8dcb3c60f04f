"""The adapter library: its index, the selector, and prediction that routes each photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam2pal.api import load_templates, predict
from sam2pal.cli import main
from sam2pal.engine.frames import Encoder
from sam2pal.engine.selector import choose, embed, floor
from sam2pal.engine.trainer import TrainConfig, Trainer
from sam2pal.errors import SamPalError
from sam2pal.io.images import list_images, load_image
from sam2pal.io.records import OutputOptions
from sam2pal.model.build import load_model
from sam2pal.model.library import INDEX_NAME, AdapterLibrary
from sam2pal.synthetic.domains import write_collection

DOMAINS = ("in-domain", "new-setup", "unseen-taxon")


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict[str, Path]:
    """One collection per synthetic domain and a one-epoch adapter for each (decoder mode, fast;
    one template, so the trained epoch is kept rather than judged against zero-shot)."""
    root = tmp_path_factory.mktemp("domains")
    model = load_model("synthetic:256", None, "cpu")
    folders = {}
    for domain in DOMAINS:
        files = write_collection(root / domain, domain, 7, templates=1, specimens=10, purpose="finetune")
        templates = load_templates(files.templates)
        loaded = load_model("synthetic:256", None, "cpu")
        Trainer(loaded, templates, list_images(files.specimens)[:4], root / f"{domain}-adapter",
                TrainConfig(epochs=1, mode="decoder", lr=1e-3, seed=3)).run()
        folders[domain] = files.folder
    assert model.fingerprint == loaded.fingerprint
    return folders


def _library(tmp_path: Path, domains: dict[str, Path], names: tuple[str, ...]) -> AdapterLibrary:
    model = load_model("synthetic:256", None, "cpu")
    encoder = Encoder(model)
    library = AdapterLibrary(tmp_path / "library")
    for name in names:
        photos = list_images(domains[name] / "specimens")[:5]  # the photos it was trained for
        library.add(name, domains[name].parent / f"{name}-adapter", embed(encoder, [load_image(p) for p in photos]),
                    [p.name for p in photos])
    return library


def test_the_index_lists_what_was_added_and_refuses_what_does_not_fit(domains, tmp_path):
    library = _library(tmp_path, domains, ("in-domain", "new-setup"))
    index = json.loads((library.folder / INDEX_NAME).read_text())
    assert [e["name"] for e in index["adapters"]] == ["in-domain", "new-setup"] and index["format"] == 1
    entry = library.entry("new-setup")
    assert entry.base_model == "synthetic:256" and entry.references == 5 and len(entry.trained_on["reference_photos"]) == 5
    assert entry.size_bytes == (library.adapter_dir("new-setup") / "adapter_model.safetensors").stat().st_size
    assert library.references("new-setup").shape[0] == 5
    with pytest.raises(SamPalError, match="already has an adapter 'new-setup'"):
        library.add("new-setup", domains["new-setup"].parent / "new-setup-adapter", np.zeros((1, 4)), [])
    with pytest.raises(SamPalError, match="adapter name '../x'"):
        library.add("../x", domains["new-setup"].parent / "new-setup-adapter", np.zeros((1, 4)), [])
    library.remove("in-domain")
    assert [e.name for e in library.entries()] == ["new-setup"] and not (library.folder / "in-domain").exists()
    with pytest.raises(SamPalError, match=r"no adapter 'in-domain' in .*library \(it has: new-setup\)"):
        library.remove("in-domain")


def test_the_selector_picks_each_photo_s_own_collection(domains, tmp_path):
    """Photos the library never saw (specimens 5-9) go to their own domain's adapter."""
    library = _library(tmp_path, domains, DOMAINS)
    encoder = Encoder(load_model("synthetic:256", None, "cpu"))
    references = {name: library.references(name) for name in DOMAINS}
    floors = {name: floor(vectors) for name, vectors in references.items()}
    right = total = 0
    for domain in DOMAINS:
        photos = list_images(domains[domain] / "specimens")[5:]
        for vector in embed(encoder, [load_image(p) for p in photos]):
            choice = choose(vector, references, 0.5, floors)
            right += choice.adapter == domain
            total += 1
    assert right / total >= 0.9, f"{right} of {total}"
    alone = {"new-setup": references["new-setup"]}  # a library without the photos' collection
    strangers = embed(encoder, [load_image(p) for p in list_images(domains["in-domain"] / "specimens")])
    picks = [choose(v, alone, 0.5, {"new-setup": floors["new-setup"]}) for v in strangers]
    assert all(c.confidence == 1.0 and not c.inside and c.adapter is None for c in picks)


def test_adding_a_domain_never_changes_an_earlier_domain_s_results(domains, tmp_path):
    folder = domains["new-setup"]
    templates = load_templates(folder / "templates.json")
    model = load_model("synthetic:256", None, "cpu")
    library = _library(tmp_path, domains, ("new-setup",))
    options = OutputOptions(masks="none")
    predict(model, templates, folder / "specimens", tmp_path / "one", qc=None, options=options, library=library.folder)
    library.add("unseen-taxon", domains["unseen-taxon"].parent / "unseen-taxon-adapter",
                _library(tmp_path / "b", domains, ("unseen-taxon",)).references("unseen-taxon"), [])
    predict(model, templates, folder / "specimens", tmp_path / "two", qc=None, options=options, library=library.folder)
    one, two = (json.loads((tmp_path / run / "predictions.json").read_text()) for run in ("one", "two"))
    assert [a["segmentation"] for a in one["annotations"]] == [a["segmentation"] for a in two["annotations"]]
    chosen = [json.loads((tmp_path / run / "report.json").read_text())["images"] for run in ("one", "two")]
    assert {i["adapter"]["name"] for i in chosen[0]} == {i["adapter"]["name"] for i in chosen[1]} == {"new-setup"}
    assert one["info"]["parameters"]["adapter_library"]["adapters"].keys() == {"new-setup"}
    assert {i["sam2pal_adapter"]["name"] for i in one["images"]} == {"new-setup"}  # the provenance, per image
    base = predict(load_model("synthetic:256", None, "cpu"), templates, folder / "specimens", tmp_path / "base",
                   qc=None, options=options)
    assert base["n_ok"] == 10
    plain = json.loads((tmp_path / "base" / "predictions.json").read_text())
    assert [a["segmentation"] for a in plain["annotations"]] != [a["segmentation"] for a in one["annotations"]]


def test_a_photo_no_adapter_is_trusted_with_goes_to_the_base_model_flagged(domains, tmp_path):
    library = _library(tmp_path, domains, ("new-setup",))
    twin = domains["new-setup"].parent / "new-setup-adapter"
    library.add("twin", twin, library.references("new-setup"), [])  # two identical candidates: 50 % each
    folder = domains["new-setup"]
    templates = load_templates(folder / "templates.json")
    predict(load_model("synthetic:256", None, "cpu"), templates, folder / "specimens", tmp_path / "out", qc=None,
            options=OutputOptions(masks="none"), library=library.folder, min_confidence=0.6)
    images = json.loads((tmp_path / "out" / "report.json").read_text())["images"]
    assert all(i["adapter"]["name"] is None and i["adapter"]["confidence"] == pytest.approx(0.5) for i in images)
    assert all(i["flags"] == ["adapter uncertain"] for i in images)
    plain = predict(load_model("synthetic:256", None, "cpu"), templates, folder / "specimens", tmp_path / "plain",
                    qc=None, options=OutputOptions(masks="none"))
    assert plain["n_ok"] == 10
    routed, base = (json.loads((tmp_path / run / "predictions.json").read_text()) for run in ("out", "plain"))
    assert [a["segmentation"] for a in routed["annotations"]] == [a["segmentation"] for a in base["annotations"]]


def test_the_adapters_command_adds_lists_removes_and_predict_uses_it(domains, tmp_path, capsys):
    library = tmp_path / "lib"
    adapter = domains["new-setup"].parent / "new-setup-adapter"
    assert main(["adapters", "add", "setup-b", str(adapter), "--images", str(domains["new-setup"] / "specimens"),
                 "--library", str(library), "--references", "4"]) == 0
    assert "added setup-b" in capsys.readouterr().out
    assert main(["adapters", "list", "--library", str(library)]) == 0
    listing = capsys.readouterr().out
    assert "1 adapter(s)" in listing and "setup-b\t" in listing and "4 references" in listing
    code = main(["predict", "--model", "synthetic:256", "--templates", str(domains["new-setup"] / "templates.json"),
                 "--images", str(domains["new-setup"] / "specimens"), "--out", str(tmp_path / "out"),
                 "--adapters", str(library), "--adapter", str(adapter), "--quiet"])
    assert code == 2 and "pass it without --adapter and --ray" in capsys.readouterr().err
    assert main(["adapters", "remove", "setup-b", "--library", str(library)]) == 0
    assert AdapterLibrary(library).entries() == []


def test_the_web_app_offers_the_server_s_library_and_routes_each_photo(domains, tmp_path):
    import gradio as gr

    from backends.local import LocalBackend
    from sam2pal.ui.handlers import LIBRARY_CHOICE, AppConfig, SamPalApp
    from sam2pal.ui.workspace import Limits, Workspaces

    library = _library(tmp_path, domains, ("new-setup", "unseen-taxon"))
    folder = domains["new-setup"]
    backend = LocalBackend()
    try:
        for configured in (None, str(library.folder)):
            ui = SamPalApp(AppConfig(model="synthetic:256", image_size=256, device="cpu", adapter_library=configured),
                           backend, Workspaces(tmp_path / f"sessions-{configured is None}"))
            token, ws = ui.workspaces.get(None)
            ws.import_coco(str(folder / "templates.json"), [str(folder / "template_0.png")])
            ws.add_specimens([str(p) for p in list_images(folder / "specimens")[:4]], Limits())
            if configured is None:
                with pytest.raises(gr.Error, match="no adapter library"):
                    ui.start_prediction(LIBRARY_CHOICE, "none", "256", "synthetic:256", token)
                continue
            ui.start_prediction(LIBRARY_CHOICE, "none", "256", "synthetic:256", token)
            status = backend.wait(ws.job("predict"), timeout=300)
            assert status.state == "done", status.error
            images = json.loads(Path(status.files["report"]).read_text())["images"]
            assert len(images) == 4 and {i["adapter"]["name"] for i in images} == {"new-setup"}
    finally:
        backend.close()
