"""Serve a trained run over REST: python app/serve.py run=<run dir> [port=8000 max_batch_size=32 api_key=...]."""

from attnlab.cli import serve

if __name__ == "__main__":
    serve()
