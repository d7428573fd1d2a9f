"""Sample from a language-model run: python app/generate.py run=<run dir> prompt="Once upon a time" max_new_tokens=200."""

from attnlab.cli import generate

if __name__ == "__main__":
    generate()
