"""Predict with a trained classifier: python app/predict.py run=<run dir> input="a text" | input=<image> | input=<csv|jsonl|folder> [output=<csv|jsonl>]."""

from attnlab.cli import predict

if __name__ == "__main__":
    predict()
