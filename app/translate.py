"""Translate with a trained run: python app/translate.py run=<run dir> text="A man is riding a bicycle." [beam_size=5 n_best=1]
or input=<file> output=<file> (one sentence a line)."""

from attnlab.cli import translate

if __name__ == "__main__":
    translate()
