"""sam2pal web app entry point (also the Hugging Face Space's app_file).

    python app.py [--host 127.0.0.1] [--port 7860] [--model tiny] [--image-size 1024] [--device auto] [--backend local]

The same as `sam2pal serve`; flags and their SAM2PAL_* environment variables: sam2pal/ui/serve.py.
"""

from sam2pal.ui.serve import main

if __name__ == "__main__":
    main()
