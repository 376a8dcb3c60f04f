"""The sam2pal web app: templates → optional fine-tune → segment the collection → export.

This module lays out the page and wires its controls to the handlers (`ui.handlers`).
"""

from __future__ import annotations

import gradio as gr

from backends.base import Backend
from sam2pal.ui.api import register_api
from sam2pal.ui.handlers import BUSY_TICK_SECONDS, LIBRARY_CHOICE, AppConfig, SamPalApp, model_note
from sam2pal.ui.workspace import Workspaces

CSS = "#editor canvas {cursor: crosshair}"

__all__ = ["AppConfig", "build_app", "launch_options"]


def launch_options(config: AppConfig, workspaces: Workspaces) -> dict:
    """What `launch` needs besides where to listen: upload cap, no run history kept in the
    browser (a shared host), the page's CSS, and the session folders results are served from."""
    return {"max_file_size": config.max_file_size, "run_history": False, "css": CSS,
            "allowed_paths": [str(workspaces.root)]}


def build_app(config: AppConfig, backend: Backend | None = None, workspaces: Workspaces | None = None) -> gr.Blocks:
    if backend is None:
        from backends.local import LocalBackend

        backend = LocalBackend()
    ui = SamPalApp(config, backend, workspaces)
    with gr.Blocks(title="sam2pal", delete_cache=(3600, 3600)) as app:
        token = gr.BrowserState(None, storage_key="sam2pal_session")
        gr.Markdown("# sam2pal\nAnnotate a few template specimens, segment the same structures on the whole "
                    f"collection, review, download COCO. Model: `{config.model}`{model_note(config.model)} · "
                    f"jobs: {backend.describe()}")
        with gr.Tab("1. Templates"):
            with gr.Row():
                with gr.Column(scale=1):
                    template_files = gr.File(label="Template images", file_count="multiple", file_types=["image"],
                                             elem_id="template-files")
                    structures = gr.Textbox(label="Structures (one per line)", lines=4, placeholder="scape\neye\nwing",
                                            elem_id="structures")
                    apply = gr.Button("Apply structures", elem_id="apply-structures")
                    example = gr.Button("Load an example collection (no photos needed)", elem_id="example")
                    with gr.Accordion("Import a COCO template file", open=False):
                        coco_file = gr.File(label="COCO JSON", file_types=[".json"], elem_id="coco-file")
                        coco_images = gr.File(label="Its images", file_count="multiple", file_types=["image"],
                                              elem_id="coco-images")
                        import_button = gr.Button("Import", elem_id="import-coco")
                    template_choice = gr.Dropdown(label="Template in the editor", choices=[])
                with gr.Column(scale=3):
                    editor = gr.ImageEditor(label="Draw each structure on its own layer", type="numpy", image_mode="RGBA",
                                            format="png", transforms=(), elem_id="editor",
                                            layers=gr.LayerOptions(layers=["structure"], allow_additional_layers=False))
                    with gr.Row():
                        save = gr.Button("Save masks", variant="primary", elem_id="save-masks")
                        structure_choice = gr.Radio(label="Structure", choices=[])
                        clear = gr.Button("Clear this structure's mask")
            template_note = gr.Markdown(elem_id="template-note")
            review = gr.Gallery(label="Review: each structure's mask as the server received it", columns=4, height=320,
                                object_fit="contain", elem_id="review")
            with gr.Accordion("Or click points on a structure for a SAM2 mask", open=False):
                with gr.Row():
                    template_preview = gr.Image(label="Click inside (or outside) the structure", interactive=False,
                                                elem_id="click-image", scale=3,
                                                format="jpeg")  # encoded after every click: JPEG is the quickest
                    with gr.Column(scale=1):
                        point_kind = gr.Radio(label="Click adds a point", value="inside (positive)",
                                              choices=["inside (positive)", "outside (negative)"])
                        point_note = gr.Markdown()
                        accept_points = gr.Button("Accept into the selected structure")
                        reset_points = gr.Button("Clear points")
            points = gr.State([])
            point_mask = gr.State(None)
            download_templates = gr.DownloadButton("Download template set (COCO)")
        with gr.Tab("2. Fine-tune (optional)"):
            specimen_files_t = gr.File(label="Specimen photos (or a zip)", file_count="multiple")
            specimen_note_t = gr.Markdown()
            with gr.Row():
                epochs = gr.Number(label="Epochs", value=5, precision=0, minimum=1)
                mode = gr.Radio(label="Mode", choices=["lora", "decoder", "full"], value="lora")
                lr = gr.Textbox(label="Learning rate", value="", placeholder="default for the mode (LoRA 2e-4, "
                                "decoder 1e-5, full 5e-6)")
                train_size = gr.Dropdown(label="Image size", choices=["256", "512", "768", "1024"], value=str(config.image_size))
                train_model = gr.Dropdown(label="Model", choices=ui.choices, value=config.model)
            corrections = gr.Markdown()
            with gr.Row():
                use_corrections = gr.Checkbox(label="Use my corrections as labels (supervised; palindromes on the "
                                              "other specimens)", value=False)
                from_previous = gr.Checkbox(label="Start from the adapter fine-tuned here", value=False)
            with gr.Row():
                start_train = gr.Button("Start fine-tuning", variant="primary")
                cancel_train = gr.Button("Cancel")
            train_status = gr.Textbox(label="Status", interactive=False)
            loss_plot = gr.LinePlot(x="step", y="loss", label="Training loss")
            validation = gr.Dataframe(headers=["structure", "zero-shot", "previous adapter", "this fine-tune (kept)"],
                                      label="Validation IoU on held-out templates or labels")
            adapter_file = gr.File(label="Adapter (download)")
            adapter_upload = gr.File(label="Upload an adapter zip from an earlier fine-tune", file_types=[".zip"])
            adapter_note = gr.Markdown()
        with gr.Tab("3. Segment the collection"):
            specimen_files = gr.File(label="Specimen photos (or a zip)", file_count="multiple", elem_id="specimens")
            specimen_note = gr.Markdown()
            with gr.Row():
                adapter_choice = gr.Radio(label="Adapter", value="none", choices=["none", "fine-tuned here", "uploaded"]
                                          + ([LIBRARY_CHOICE] if config.adapter_library else []))
                orientation = gr.Dropdown(label="Orientation search", choices=["none", "rot4", "rot4flip"], value="none")
                predict_size = gr.Dropdown(label="Image size", choices=["256", "512", "768", "1024"], value=str(config.image_size))
                predict_model = gr.Dropdown(label="Model (an adapter only fits the model it was trained on)",
                                            choices=ui.choices, value=config.model)
                clear_specimens = gr.Button("Remove all specimens")
            with gr.Row():
                start_predict = gr.Button("Segment collection", variant="primary", elem_id="segment")
                cancel_predict = gr.Button("Cancel")
            predict_status = gr.Textbox(label="Status", interactive=False, elem_id="predict-status")
            gallery = gr.Gallery(label="Results, worst quality first (click one to correct it)", columns=4, height=420,
                                 object_fit="contain", elem_id="results")
            with gr.Accordion("Correct a structure", open=True):
                corrected_file = gr.Textbox(label="Specimen", interactive=False)
                correction_structure = gr.Dropdown(label="Structure", choices=[])
                correction_editor = gr.ImageEditor(label="Paint on 'add' or 'remove'", type="numpy", image_mode="RGBA",
                                                   format="png", transforms=(),
                                                   layers=gr.LayerOptions(layers=["add", "remove"], allow_additional_layers=False))
                add_to_templates = gr.Checkbox(label="Also add this specimen to the templates for the next round")
                apply_correction = gr.Button("Apply correction")
                correction_note = gr.Markdown()
        with gr.Tab("4. Export"):
            export = gr.Button("Prepare downloads", variant="primary", elem_id="export")
            coco_out = gr.File(label="predictions.json (COCO, checked with pycocotools)", elem_id="coco-out")
            zip_out = gr.File(label="Everything (masks, overlays, report, COCO)")
        timer = gr.Timer(BUSY_TICK_SECONDS, active=False)  # once a second while a job runs (see live_view)
        watch = {"fn": lambda: gr.Timer(BUSY_TICK_SECONDS, active=True), "outputs": [timer], "api_visibility": "private"}

        app.load(ui.attach, inputs=[token], outputs=[token, structures, template_choice, editor, specimen_note, template_note],
                 api_visibility="private").then(**watch)
        template_files.upload(ui.upload_templates, [template_files, token], [template_choice], api_visibility="private")
        apply.click(ui.apply_structures, [structures, token], [editor, structure_choice], api_visibility="private").then(
            ui.show_template, [template_choice, token], [editor, review, template_preview], api_visibility="private")
        import_button.click(ui.import_coco, [coco_file, coco_images, token],
                            [structures, template_choice, editor, template_note], api_visibility="private").then(
            ui.show_template, [template_choice, token], [editor, review, template_preview], api_visibility="private")
        example.click(ui.load_example, [token], [structures, template_choice, editor, template_note, specimen_note],
                      api_visibility="private").then(
            ui.show_template, [template_choice, token], [editor, review, template_preview], api_visibility="private")
        template_choice.change(ui.show_template, [template_choice, token], [editor, review, template_preview],
                               api_visibility="private")
        save.click(ui.save_masks, [editor, template_choice, token], [review, template_note], api_visibility="private")
        clear.click(ui.clear_mask, [template_choice, structure_choice, token], [editor, review, template_preview],
                    api_visibility="private")
        template_preview.select(ui.click_point, [points, point_kind, template_choice, token],
                                [points, point_mask, template_preview, point_note], api_visibility="private")
        accept_points.click(ui.accept_points, [point_mask, template_choice, structure_choice, token],
                            [points, point_mask, editor, review, template_preview, point_note], api_visibility="private")
        reset_points.click(lambda name, t: ([], None, *ui.show_template(name, t)[2:], "points cleared"),
                           [template_choice, token], [points, point_mask, template_preview, point_note],
                           api_visibility="private")
        download_templates.click(ui.download_templates, [token], [download_templates], api_visibility="private")
        for files, note in ((specimen_files, specimen_note), (specimen_files_t, specimen_note_t)):
            files.upload(ui.upload_specimens, [files, token], [note], api_visibility="private")
        clear_specimens.click(ui.clear_specimens, [token], [specimen_note], api_visibility="private")
        start_train.click(ui.start_training, [epochs, mode, lr, train_size, train_model, use_corrections, from_previous,
                                              token], [train_status], api_visibility="private").success(**watch)
        cancel_train.click(lambda t: ui.cancel("train", t), [token], [train_status], api_visibility="private").then(**watch)
        adapter_upload.upload(ui.upload_adapter, [adapter_upload, token], [adapter_note], api_visibility="private")
        start_predict.click(ui.start_prediction, [adapter_choice, orientation, predict_size, predict_model, token], [predict_status],
                            api_visibility="private").success(**watch)
        cancel_predict.click(lambda t: ui.cancel("predict", t), [token], [predict_status], api_visibility="private").then(**watch)
        timer.tick(ui.live_view, [token], [train_status, loss_plot, validation, adapter_file, corrections, predict_status,
                                          gallery, timer], api_visibility="private", show_progress="hidden")
        gallery.select(ui.open_correction, [token, correction_structure],
                       [corrected_file, correction_editor, correction_structure], api_visibility="private")
        correction_structure.input(ui.change_correction_structure, [corrected_file, correction_structure, token],
                                   [correction_editor, correction_structure], api_visibility="private")
        apply_correction.click(ui.apply_correction,
                               [correction_editor, corrected_file, correction_structure, add_to_templates, token],
                               [correction_note, correction_editor, correction_structure], api_visibility="private").success(**watch)
        export.click(ui.export, [token], [coco_out, zip_out], api_visibility="private")
        register_api(ui)
    return app
