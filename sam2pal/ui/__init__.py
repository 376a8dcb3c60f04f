"""The Gradio web app. It never imports torch: work runs in a separate process."""
